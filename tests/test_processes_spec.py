"""sgm_ref.processes.from_spec / to_spec: the short process names of `sgm-ref audit --process`."""

import pytest

from sgm_ref.processes import DDPM, EDM, OU, VE, VP, FlowMatching, SubVP, VPCosine, from_spec, to_spec


@pytest.mark.parametrize("text, expected", [
    ("ou", OU()),
    ("OU", OU()),
    ("vp", VP()),
    ("vp:beta_min=0.1,beta_max=20", VP(0.1, 20.0)),
    ("vp:beta_max=30", VP(beta_max=30.0)),
    ("vpcosine", VPCosine()),
    ("vpcosine:s=0.01", VPCosine(s=0.01)),
    ("subvp", SubVP()),
    ("ve:sigma_min=0.01,sigma_max=50", VE(0.01, 50.0)),
    ("edm", EDM()),
    ("edm:t_max=80", EDM(t_max=80.0)),
    ("flow", FlowMatching()),
    ("flowmatching", FlowMatching()),
    ("ddpm", DDPM()),
    ("ddpm:scaled_linear", DDPM("scaled_linear")),
    ("ddpm:squaredcos_cap_v2", DDPM("squaredcos_cap_v2")),
    ("ddpm:linear,beta_start=0.0001,beta_end=0.02,num_train_timesteps=1000", DDPM("linear", 0.0001, 0.02, 1000)),
    ("ddpm:beta_schedule=scaled_linear,num_train_timesteps=50", DDPM("scaled_linear", num_train_timesteps=50)),
    (" vp : beta_min = 0.5 ", VP(beta_min=0.5)),
])
def test_from_spec_builds_the_process(text, expected):
    assert from_spec(text) == expected


@pytest.mark.parametrize("process", [OU(), VP(0.3, 7.1), VPCosine(s=0.02, t_max=0.999), SubVP(0.2, 10.0),
                                     VE(0.002, 80.0), EDM(), EDM(t_max=80.0), FlowMatching(t_max=0.9),
                                     DDPM("scaled_linear", 0.00085, 0.012, 1000), DDPM("squaredcos_cap_v2"),
                                     VP(0.1 + 0.2, 1 / 3)])
def test_to_spec_round_trips_exactly(process):
    text = to_spec(process)
    assert from_spec(text) == process
    assert to_spec(from_spec(text)) == text


@pytest.mark.parametrize("text, pattern", [
    ("cosine", "unknown process 'cosine'"),
    ("", "unknown process ''"),
    ("vp:beta=1", "vp has no parameter 'beta' (its parameters: beta_min, beta_max)"),
    ("ou:t_max=3", "ou has no parameter 't_max' (its parameters: none)"),
    ("vp:beta_min=abc", "beta_min='abc' is not a number"),
    ("ddpm:num_train_timesteps=1.5", "num_train_timesteps='1.5' is not an integer"),
    ("ddpm:cosine", "beta_schedule must be one of"),
    ("vp:beta_min=1,beta_min=2", "beta_min given twice"),
    ("vp:0.1", "'0.1' is not KEY=VALUE"),
    ("vp:beta_min=", "'beta_min=' is not KEY=VALUE"),
    ("ve:sigma_min=5,sigma_max=1", "sigma_max must be > sigma_min"),
    ("vp:beta_min=nan", "beta_min"),
])
def test_from_spec_refuses_bad_specs_naming_them(text, pattern):
    with pytest.raises(ValueError) as info:
        from_spec(text)
    message = str(info.value)
    assert pattern in message
    assert f"process spec {text!r}" in message
    assert "valid: ou; vp[:beta_min=,beta_max=]" in message and "ddpm:linear|scaled_linear|squaredcos_cap_v2" in message


def test_from_spec_refuses_a_non_string():
    with pytest.raises(ValueError, match="must be a string"):
        from_spec(None)


def test_a_spec_number_that_underflows_to_0_is_refused():
    """vp:beta_min=1e-400 was read as beta_min = 0, another process without a word (the
    target specs refuse the same); an exact 0 and the smallest subnormal still read."""
    for text, key in (("vp:beta_min=1e-400", "beta_min"), ("subvp:beta_min=-2e-999", "beta_min"),
                      ("ddpm:linear,beta_start=1e-400", "beta_start")):
        with pytest.raises(ValueError, match=rf"{key}='-?\de-\d+' is below float64's smallest positive number "
                                             r"\(about 5e-324\) and would read as 0; write 0 if that is what you mean"):
            from_spec(text)
    assert from_spec("vp:beta_min=0e-400").beta_min == 0.0
    assert from_spec("vp:beta_min=5e-324").beta_min == 5e-324
