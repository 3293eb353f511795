"""The config schema: every bad name is an error listing the valid ones (with
a close match); precedence defaults < YAML < environment < CLI flags."""
import argparse
import textwrap

import pytest
import torch

import dsport
from dsport.core.config import Config, add_config_arguments, config_from_args, from_mapping, load_config
from dsport.core.errors import ConfigError


def err(data) -> str:
    with pytest.raises(ConfigError) as e:
        from_mapping(data)
    return str(e.value)


def test_misspelled_backend_suggests_the_close_match():
    msg = err({"backend": "tritonn"})
    assert "backend: unknown name 'tritonn' (did you mean 'triton'?)" in msg
    assert "valid: ['cuda', 'hip', 'npu', 'onnx', 'reference', 'tilelang', 'torch', 'triton']" in msg


def test_misspelled_backend_through_resolve_and_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"did you mean 'triton'\?"):
        dsport.resolve("tritonn")
    p = tmp_path / "c.yaml"
    p.write_text("backend: tritonn\n")
    with pytest.raises(ConfigError, match=r"did you mean 'triton'\?"):
        dsport.resolve(p)


def test_unknown_op_in_overrides():
    msg = err({"ops": {"sparse_mla_prefil": "triton"}})
    assert "ops: op: unknown name 'sparse_mla_prefil' (did you mean 'sparse_mla_prefill'?)" in msg
    assert "'act_quant'" in msg and "'moe_gate'" in msg  # the valid op names are listed
    assert "ops.dequant: unknown name 'tritonn' (did you mean 'triton'?)" in err({"ops": {"dequant": "tritonn"}})


def test_bad_fp8_format():
    msg = err({"fp8": {"format": "e5m2"}})
    assert "fp8.format: unknown name 'e5m2'" in msg and "valid: ['e4m3fn', 'e4m3fnuz']" in msg
    assert "(did you mean 'e4m3fnuz'?)" in err({"fp8": {"format": "e4m3fz"}})
    assert "fp8.scale: unknown name 'ue4m3'" in err({"fp8": {"scale": "ue4m3"}})
    assert "fp8: key: unknown name 'fromat' (did you mean 'format'?)" in err({"fp8": {"fromat": "e4m3fn"}})


def test_unknown_keys_are_errors_not_ignored():
    msg = err({"backend": "torch", "fallbak": "strict"})
    assert "key: unknown name 'fallbak' (did you mean 'fallback'?)" in msg
    assert "'fallback_chain'" in msg


@pytest.mark.parametrize("data, fragment", [
    ({"fallback": "lenient"}, "fallback: unknown name 'lenient'; valid: ['fallback', 'strict']"),
    ({"dtype": "float8"}, "dtype: unknown name 'float8'"),
    ({"device": "gpu0"}, "device: expected a torch device string"),
    ({"backend": 3}, "backend: expected a string, got int 3"),
    ({"fallback_chain": "torch"}, "fallback_chain: expected a list of backend names"),
    ({"fallback_chain": ["torch", "refrence"]}, "did you mean 'reference'?"),
    ({"ops": ["dequant"]}, "ops: expected a mapping op -> backend"),
])
def test_other_schema_errors(data, fragment):
    assert fragment in err(data)


def test_a_section_is_named_after_a_backend_that_declares_options():
    assert "torch: backend 'torch' takes no options" in err({"backend": "torch", "torch": {"threads": 2}})
    msg = err({"onxx": {"opset": 21}})
    assert "key: unknown name 'onxx' (did you mean 'onnx'?)" in msg and "'arch'" in msg


def test_a_valid_config_round_trips():
    cfg = from_mapping({"backend": "torch", "ops": {"sparse_mla_prefill": "triton"}, "fallback": "strict", "allow_absent_device": True,
                        "device": "cuda:1", "dtype": "bfloat16", "fp8": {"format": "e4m3fnuz", "scale": "fp32"}, "arch": "gfx942"})
    assert cfg.query() == {"device": "cuda", "dtype": torch.bfloat16, "fp8_format": "e4m3fnuz", "scale_format": "fp32", "arch": "gfx942"}
    assert from_mapping(cfg.to_mapping()) == Config(**{**cfg.__dict__, "fallback_chain": ("torch", "reference"), "origin": "mapping"})


def test_yaml_errors_name_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("backend: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml.*not valid YAML"):
        load_config(p, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", env={})


def parse(argv):
    p = argparse.ArgumentParser()
    add_config_arguments(p)
    return p.parse_args(argv)


def test_precedence_defaults_yaml_env_cli(tmp_path):
    f = tmp_path / "dsport.yaml"
    f.write_text(textwrap.dedent("""
        backend: triton
        fallback: strict
        dtype: float16
    """))
    assert load_config(env={}).backend == "reference"                      # defaults
    assert load_config(f, env={}).backend == "triton"                      # < YAML
    env = {"DSPORT_CONFIG": str(f)}
    assert load_config(env=env).backend == "triton"                        # the file named by the env
    env["DSPORT_BACKEND"] = "tilelang"
    cfg = load_config(env=env)
    assert (cfg.backend, cfg.fallback, cfg.dtype) == ("tilelang", "strict", "float16")  # env beats YAML, rest kept
    cli = config_from_args(parse(["--backend", "torch", "--op", "dequant=reference", "--fp8-format", "e4m3fnuz",
                                  "--fallback", "fallback"]), env=env)
    assert (cli.backend, cli.fallback, cli.dtype, cli.fp8_format) == ("torch", "fallback", "float16", "e4m3fnuz")
    assert dict(cli.ops) == {"dequant": "reference"}
    assert cli.origin.endswith("command line")
    other = tmp_path / "other.yaml"
    other.write_text("backend: reference\n")
    assert config_from_args(parse(["--config", str(other)]), env={"DSPORT_CONFIG": str(f)}).backend == "reference"


def test_cli_flags_are_validated_too():
    with pytest.raises(ConfigError, match="did you mean 'triton'"):
        config_from_args(parse(["--backend", "tritonn"]), env={})
    with pytest.raises(ConfigError, match="--op: expected OP=BACKEND"):
        config_from_args(parse(["--op", "dequant"]), env={})
    with pytest.raises(ConfigError, match="fp8.format: unknown name 'e5m2'"):
        config_from_args(parse(["--fp8-format", "e5m2"]), env={})
