"""What a loss needs from the rest of the recipe, checked before anything is built.

A loss config declares its needs with ``requirements() -> Requirements``; its ``check_recipe(recipe,
phase)`` (called by the recipe validator for every loss of every phase) turns unmet ones into
problem lines, each naming the fix. The rollout's own requirements (a config method of the same
name, :class:`rcm_registry.protocols.DeclaresRequirements`) are merged in by the losses that call it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import attrs

from rcm_registry.protocols import declared_requirements
from rcm_registry.schema import ComponentSpec

#: Capability a network must have for losses that take JVPs through it.
JVP = "jvp"


def network_capabilities(spec: ComponentSpec) -> tuple[frozenset[str], list[str]]:
    """(capabilities of a configured network, names of nested components that remove some).

    A network's ``provides`` is what its own code supports; a nested component (an attention
    backend, say) can take a capability away: ``jvp`` holds only if every nested component that
    is an ``attention`` provides ``jvp`` too.
    """
    caps = set(spec.component.provides)
    culprits: list[str] = []
    if attrs.has(type(spec.config)):
        for field in attrs.fields(type(spec.config)):
            value = getattr(spec.config, field.name)
            if isinstance(value, ComponentSpec) and value.kind == "attention" and JVP not in value.component.provides:
                caps.discard(JVP)
                culprits.append(f"{field.name}: {value.name}")
    return frozenset(caps), culprits


@attrs.frozen
class Requirements:
    """Declared needs of one loss (or rollout).

    Attributes:
        who: the component name, for messages.
        trains: the network role this loss produces gradients for (the phase must train it).
        networks: role -> capabilities that role's network must have (``()`` = just exist).
        time: time-sampler roles under ``time:`` that it draws from.
        rollout: whether it calls the recipe's ``rollout:``.
        teacher_wrapper: whether it reads networks through ``teacher_wrapper:``.
        trained_elsewhere: roles some phase of the recipe must train (e.g. DMD's fake score).
        fixes: how to satisfy a requirement, by key: ``network:ROLE``, ``capability:ROLE:CAP``,
            ``time:ROLE``, ``rollout``, ``teacher_wrapper``, ``trains``, ``trained:ROLE``.
    """

    who: str
    trains: str | None = None
    networks: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    time: tuple[str, ...] = ()
    rollout: bool = False
    teacher_wrapper: bool = True
    trained_elsewhere: tuple[str, ...] = ()
    fixes: Mapping[str, str] = attrs.field(factory=dict)

    def merge(self, other: Requirements) -> Requirements:
        """Both sets of needs (``who`` and ``trains`` stay this one's)."""
        networks = {k: tuple(v) for k, v in self.networks.items()}
        for role, caps in other.networks.items():
            networks[role] = tuple(dict.fromkeys((*networks.get(role, ()), *caps)))
        return Requirements(
            who=self.who,
            trains=self.trains,
            networks=networks,
            time=tuple(dict.fromkeys((*self.time, *other.time))),
            rollout=self.rollout or other.rollout,
            teacher_wrapper=self.teacher_wrapper or other.teacher_wrapper,
            trained_elsewhere=tuple(dict.fromkeys((*self.trained_elsewhere, *other.trained_elsewhere))),
            fixes={**other.fixes, **self.fixes},
        )

    def problems(
        self,
        *,
        networks: Mapping[str, Collection[str]],
        time: Collection[str],
        rollout: bool,
        teacher_wrapper: bool,
        trains: str | None,
        trained: Collection[str] = (),
        culprits: Mapping[str, list[str]] | None = None,
    ) -> list[str]:
        """One line per unmet need, each ending with its fix.

        ``networks`` maps the recipe's roles to their capabilities, ``time`` lists its time-sampler
        roles, ``trains`` is the role of the phase holding this loss, ``trained`` every role some
        phase trains, ``culprits`` the nested components that removed a role's capabilities.
        """
        out: list[str] = []
        culprits = culprits or {}

        def fix(key: str) -> str:
            text = self.fixes.get(key)
            return f": {text}" if text else ""

        if self.trains is not None and trains is not None and trains != self.trains:
            out.append(
                f"{self.who} trains network {self.trains!r} but this phase trains {trains!r}; move it to the "
                f"phase that trains {self.trains!r}{fix('trains')}"
            )
        for role, caps in self.networks.items():
            if role not in networks:
                have = ", ".join(sorted(networks)) or "none"
                out.append(
                    f"{self.who} needs network {role!r}, which the recipe lacks (has: {have}){fix(f'network:{role}')}"
                )
                continue
            for cap in caps:
                if cap in networks[role]:
                    continue
                because = culprits.get(role)
                why = f" (because of {', '.join(because)})" if because else ""
                out.append(
                    f"{self.who} needs network {role!r} to support {cap!r}, which it does not{why}"
                    f"{fix(f'capability:{role}:{cap}')}"
                )
        for role in self.time:
            if role not in time:
                have = ", ".join(sorted(time)) or "none"
                out.append(f"{self.who} needs time sampler `time.{role}` (has: {have}){fix(f'time:{role}')}")
        if self.rollout and not rollout:
            out.append(f"{self.who} needs a `rollout:` to generate samples with the student{fix('rollout')}")
        if self.teacher_wrapper and not teacher_wrapper:
            out.append(f"{self.who} needs a `teacher_wrapper:` to read networks in TrigFlow{fix('teacher_wrapper')}")
        for role in self.trained_elsewhere:
            if role in networks and role not in trained:
                out.append(f"{self.who} needs network {role!r} to be trained by some phase{fix(f'trained:{role}')}")
        return out

    def check_recipe(self, recipe: Any, phase: str) -> list[str]:
        """:meth:`problems` for a validated ``rcm_registry.recipe.sections.Recipe`` and one of its phases."""
        body = recipe.body
        caps: dict[str, frozenset[str]] = {}
        culprits: dict[str, list[str]] = {}
        for role, entry in recipe.networks.items():
            caps[role], culprits[role] = network_capabilities(entry.spec)
        req = self
        if self.rollout and body.rollout is not None:
            nested = declared_requirements(body.rollout.config)
            if nested is not None:
                req = self.merge(nested)
        cfg = body.phases[phase]
        return req.problems(
            networks=caps,
            time=list(body.time),
            rollout=body.rollout is not None,
            teacher_wrapper=body.teacher_wrapper is not None,
            trains=cfg.trains or phase,
            trained=recipe.trained_roles(),
            culprits=culprits,
        )


# -- fix texts shared by the losses -------------------------------------------------------------------
def jvp_fix(role: str) -> str:
    return (
        f"use an attention backend with forward-mode AD for networks.{role}, e.g. "
        f"`networks.{role}.attention: {{use: triton_jvp}}` (CUDA) or `{{use: math}}` (reference), or a network "
        "whose component provides 'jvp'"
    )


def network_fix(role: str) -> str:
    if role == "fake_score":
        return (
            "add `networks.fake_score: {init_from: teacher}` and a critic phase that trains it, e.g. "
            "`phases.critic: {trains: fake_score, losses: [{use: fake_score_dsm}], optimizer: {...}}`"
        )
    if role == "teacher":
        return "add `networks.teacher: {use: NETWORK, weights: ...}` with the pretrained teacher"
    return f"add `networks.{role}: {{init_from: teacher}}`"


def time_fix(role: str) -> str:
    what = "p_G, the times sCM trains at" if role == "student" else "p_D, the times the rollout and DMD draw"
    return f"add `time.{role}: {{use: SAMPLER, ...}}` ({what})"


ROLLOUT_FIX = "add e.g. `rollout: {use: stochastic_backward, max_steps: 4}`"
TEACHER_FIX = "add e.g. `teacher_wrapper: {use: rectified_flow, t_scale: 1000}`"
