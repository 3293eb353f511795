"""The checkpoint loader and config.json reader check everything against the
config before anything runs: each wrong thing in gives an error naming the
tensor, file or key at fault."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from dsport.core.errors import ConfigError, ValidationError
from dsport.core.model import Model, load_config, tiny_config
from dsport.core.model.weights import INDEX, CheckpointError, make_checkpoint

W = "model.layers.0.self_attn.q_a_proj.weight"  # an FP8 projection, in some shard
S = W + "_scale_inv"                            # its scale, perhaps in another


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("base"), tiny_config(n_layers=2), seed=1)


@pytest.fixture
def ckpt(base, tmp_path):
    out = tmp_path / "ckpt"
    shutil.copytree(base, out)
    return out


def _shard_of(path, name):
    return path / json.loads((path / INDEX).read_text())["weight_map"][name]


def _edit(path, name, fn):
    """Replace tensors of the shard holding ``name``: fn(dict of tensors) edits it in place."""
    shard = _shard_of(path, name)
    tensors = load_file(str(shard))
    fn(tensors)
    save_file(tensors, str(shard))


def _config(path, **patch):
    p = path / "config.json"
    hf = json.loads(p.read_text())
    hf.update(patch)
    p.write_text(json.dumps(hf))


def _tokens(n=8):
    return torch.randint(0, 512, (1, n), generator=torch.Generator().manual_seed(0))


def test_e4m3fnuz_weights_are_dequantized_with_their_scales(ckpt, base):
    shards = {s: load_file(str(s)) for s in sorted(ckpt.glob("*.safetensors"))}
    every = {n: t for tensors in shards.values() for n, t in tensors.items()}
    for tensors in shards.values():  # the same values in e4m3fnuz: w / 2 is exact in fnuz, the scale doubles
        for name, t in list(tensors.items()):
            if t.dtype == torch.float8_e4m3fn:
                tensors[name] = (t.float() / 2).to(torch.float8_e4m3fnuz)
            elif name.endswith("weight_scale_inv"):
                assert every[name.removesuffix("_scale_inv")].dtype == torch.float8_e4m3fn
                tensors[name] = t * 2
    for shard, tensors in shards.items():
        save_file(tensors, str(shard))
    want = Model.from_pretrained(base, backend="torch", dequantize=True)(_tokens())
    got = Model.from_pretrained(ckpt, backend="torch", dequantize=True)(_tokens())
    torch.testing.assert_close(got, want)  # without the scales this is off by the whole scale factor
    assert torch.isfinite(Model.from_pretrained(ckpt, backend="torch")(_tokens())).all()  # the FP8 path takes fnuz too


@pytest.mark.parametrize("dequantize", [False, True], ids=["fp8", "dequantize"])
def test_scale_shape_is_checked_on_both_paths(ckpt, dequantize):
    # 64-blocks instead of 128: twice as many scale rows and columns
    _edit(ckpt, S, lambda t: t.update({S: t[S].repeat_interleave(2, 0).repeat_interleave(2, 1)}))
    with pytest.raises(CheckpointError, match=r"q_a_proj.weight_scale_inv: checkpoint \(2, 4\), (model|expected) \(1, 2\)"):
        Model.from_pretrained(ckpt, backend="reference", dequantize=dequantize)


@pytest.mark.parametrize("dequantize", [False, True], ids=["fp8", "dequantize"])
def test_scale_dtype_and_missing_scale(ckpt, dequantize):
    _edit(ckpt, S, lambda t: t.update({S: t[S].bfloat16()}))
    with pytest.raises(CheckpointError, match=r"q_a_proj.weight_scale_inv: checkpoint bfloat16, expected float32"):
        Model.from_pretrained(ckpt, backend="reference", dequantize=dequantize)
    _edit(ckpt, S, lambda t: t.pop(S))
    idx = json.loads((ckpt / INDEX).read_text())
    idx["weight_map"].pop(S)
    (ckpt / INDEX).write_text(json.dumps(idx))
    with pytest.raises(CheckpointError, match="q_a_proj.weight_scale_inv" if not dequantize else "without its scale"):
        Model.from_pretrained(ckpt, backend="reference", dequantize=dequantize)


def test_wrong_dtypes_are_named(ckpt):
    norm = "model.layers.0.input_layernorm.weight"
    _edit(ckpt, norm, lambda t: t.update({norm: t[norm].to(torch.int32)}))
    _edit(ckpt, W, lambda t: t.update({W: t[W].bfloat16()}))
    with pytest.raises(CheckpointError) as e:
        Model.from_pretrained(ckpt, backend="reference")
    assert f"{norm}: checkpoint int32, expected a float dtype" in str(e.value)
    assert f"{W}: checkpoint bfloat16, model expects an FP8 weight" in str(e.value)


@pytest.mark.parametrize("layers", [1, 3])
def test_layer_count_must_equal_the_checkpoints(ckpt, layers):
    _config(ckpt, num_hidden_layers=layers)
    with pytest.raises(CheckpointError, match=rf"stores 2 layers .* num_hidden_layers = {layers}"):
        Model.from_pretrained(ckpt, backend="reference")


def test_mtp_layers_declared_by_the_config_are_skipped(ckpt):
    extra = "model.layers.2.input_layernorm.weight"  # a stand-in for the release's multi-token-prediction layer
    _edit(ckpt, W, lambda t: t.update({extra: torch.ones(256)}))
    idx = json.loads((ckpt / INDEX).read_text())
    idx["weight_map"][extra] = _shard_of(ckpt, W).name
    (ckpt / INDEX).write_text(json.dumps(idx))
    with pytest.raises(CheckpointError, match="stores 3 layers"):
        Model.from_pretrained(ckpt, backend="reference")
    _config(ckpt, num_nextn_predict_layers=1)
    Model.from_pretrained(ckpt, backend="reference")


def test_a_tensor_in_two_shards_is_an_error_naming_both(ckpt):
    copy = load_file(str(_shard_of(ckpt, W)))[W]
    save_file({W: copy}, str(ckpt / "extra.safetensors"))
    with pytest.raises(CheckpointError, match=rf"more than one shard.*{W} \(in (model-0000\d-of-00002|extra)\.safetensors and "):
        Model.from_pretrained(ckpt, backend="reference")
    (ckpt / INDEX).unlink()  # without the index: the same check over every shard
    with pytest.raises(CheckpointError, match="more than one shard"):
        Model.from_pretrained(ckpt, backend="reference")


@pytest.mark.parametrize("keep", [0.5, 0.001], ids=["data-cut", "header-cut"])
def test_a_truncated_shard_is_named(ckpt, keep):
    shard = _shard_of(ckpt, W)
    raw = shard.read_bytes()
    shard.write_bytes(raw[: max(8, int(len(raw) * keep))])
    with pytest.raises(CheckpointError, match=shard.name):
        Model.from_pretrained(ckpt, backend="reference")


def test_bad_index_is_named(ckpt):
    (ckpt / INDEX).write_text("{not json")
    with pytest.raises(CheckpointError, match=f"{INDEX}: not valid JSON"):
        Model.from_pretrained(ckpt, backend="reference")


@pytest.mark.parametrize("patch, fragment", [
    ({"hidden_size": "256"}, "hidden_size: expected an integer, got str '256'"),
    ({"num_hidden_layers": 0}, "num_hidden_layers: expected >= 1, got 0"),
    ({"num_hidden_layers": -2}, "num_hidden_layers: expected >= 1, got -2"),
    ({"first_k_dense_replace": -1}, "first_k_dense_replace: expected >= 0, got -1"),
    ({"index_topk": 0}, "index_topk: expected >= 1, got 0"),
    ({"n_group": 3}, "n_group: expected a divisor of n_routed_experts (16), got 3"),
    ({"topk_group": 5}, "topk_group: expected <= n_group (4), got 5"),
    ({"num_experts_per_tok": True}, "num_experts_per_tok: expected an integer, got bool"),
    ({"rms_norm_eps": 0}, "rms_norm_eps: expected > 0, got 0"),
    ({"rope_theta": "10000"}, "rope_theta: expected a number, got str"),
    ({"scoring_func": "tanh"}, "scoring_func: expected one of ['sigmoid', 'softmax'], got 'tanh'"),
    ({"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128], "scale_fmt": "ue9m0"}},
     "quantization_config.scale_fmt: expected one of ['fp32', 'ue8m0'] (or null: fp32), got 'ue9m0'"),
    ({"rope_scaling": {"type": "yarn", "factor": "40"}}, "rope_scaling.factor: expected a number"),
])
def test_config_values_are_checked_when_read(ckpt, patch, fragment):
    _config(ckpt, **patch)
    with pytest.raises(ConfigError) as e:
        load_config(ckpt)
    assert fragment in str(e.value) and "config.json" in str(e.value)


def test_invalid_json_config_is_named(ckpt):
    (ckpt / "config.json").write_text('{"hidden_size": 256,')
    with pytest.raises(ConfigError, match=r"config.json: not valid JSON at line 1"):
        load_config(ckpt)
    (ckpt / "config.json").write_bytes(b"\x89PNG\x00\xff")
    with pytest.raises(ConfigError, match="config.json: not a text file"):
        load_config(ckpt)


def test_token_ids_out_of_range_are_named(base):
    model = Model.from_pretrained(base, backend="reference")
    for bad in (torch.tensor([[1, 512, 3]]), torch.tensor([[-1, 2]])):
        with pytest.raises(ValidationError, match=r"Model.forward: argument 'tokens': expected token ids in \[0, vocab_size = 512\)"):
            model(bad)
    with pytest.raises(ValidationError, match="integer token ids"):
        model(torch.zeros(1, 3))


def test_runtime_options_are_checked(base):
    with pytest.raises(ConfigError, match=r"indexer: expected one of \['auto', 'fp8', 'float'\], got 'bf16'"):
        Model.from_pretrained(base, backend="reference", indexer="bf16")
    with pytest.raises(ConfigError, match="656-byte FP8 latent cache holds kv_lora_rank 512"):
        Model.from_pretrained(base, backend="reference", kv_cache="fp8")  # tiny_config has kv_lora_rank 128
