from rcm_registry.testing import TimeSamplerContract


class TestLogitNormal(TimeSamplerContract):
    name = "logit_normal"
