"""Activation importance: the on-the-fly reduction equals the definition, and ranks what it should."""

from __future__ import annotations

import pytest
import torch

from minispec.engines.torch.importance import (
    collect_importance,
    load_importance,
    save_importance,
)
from minispec.engines.torch.surgery import model_dims
from minispec.engines.torch.width import activation_scores
from minispec.errors import StageError


def windows(count=6, length=13, seed=0):
    return torch.randint(0, 256, (count, length), generator=torch.Generator().manual_seed(seed))


def stored_activations(model, batch):
    """Every recorded activation in full, by the same keys the recorder uses."""
    seen = {}
    handles = []
    for i, layer in enumerate(model.model.layers):
        for key, module in (
            (f"mlp.{i}", layer.mlp.down_proj),
            (f"attention.{i}", layer.self_attn.o_proj),
        ):
            handles.append(
                module.register_forward_pre_hook(lambda _m, a, key=key: seen.__setitem__(key, a[0]))
            )
        for name in ("input_layernorm", "post_attention_layernorm"):
            key = f"norm.layers.{i}.{name}"
            handles.append(
                getattr(layer, name).register_forward_hook(
                    lambda _m, _a, o, key=key: seen.__setitem__(key, o)
                )
            )
    handles.append(
        model.model.norm.register_forward_hook(lambda _m, _a, o: seen.__setitem__("norm.norm", o))
    )
    with torch.no_grad():
        model.model(input_ids=batch[:, :-1])
    for handle in handles:
        handle.remove()
    return seen


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3"])
def test_scores_follow_the_documented_aggregation(tiny_llama, model_type):
    model = tiny_llama(model_type)
    dims = model_dims(model.config)
    batch = windows()
    scores, samples = collect_importance(model, [batch[:4], batch[4:]])  # two batches
    assert samples == 6
    full = stored_activations(model, batch)
    for key, activation in full.items():
        # per sample mean over tokens of |a|, then L2 over samples
        expected = activation.abs().mean(dim=1).pow(2).sum(dim=0).sqrt()
        torch.testing.assert_close(scores[key], expected, rtol=1e-5, atol=1e-6)
    for i in range(dims.num_layers):
        per_head = (
            scores[f"attention.{i}"].view(dims.num_attention_heads, dims.head_dim).norm(dim=1)
        )
        torch.testing.assert_close(scores[f"heads.{i}"], per_head)
    norms = [v for k, v in scores.items() if k.startswith("norm.")]
    assert len(norms) == 2 * dims.num_layers + 1  # every residual RMSNorm, final norm included
    torch.testing.assert_close(scores["hidden"], sum(norms))


def test_scores_do_not_depend_on_the_batch_size(tiny_llama):
    model = tiny_llama()
    batch = windows()
    one_by_one, _ = collect_importance(model, [batch[i : i + 1] for i in range(6)])
    all_at_once, _ = collect_importance(model, [batch])
    for key in all_at_once:
        torch.testing.assert_close(one_by_one[key], all_at_once[key], rtol=1e-5, atol=1e-6)


def test_hooks_are_removed_and_outputs_unchanged(tiny_llama):
    model = tiny_llama()
    batch = windows()
    with torch.no_grad():
        before = model(batch).logits
    collect_importance(model, [batch])
    assert all(not layer.mlp.down_proj._forward_pre_hooks for layer in model.model.layers)
    assert not model.model.norm._forward_hooks
    with torch.no_grad():
        assert torch.equal(model(batch).logits, before)


def test_dead_units_score_zero_and_are_pruned_first(tiny_llama):
    model = tiny_llama()
    with torch.no_grad():
        model.model.layers[2].mlp.up_proj.weight[5] = 0  # neuron 5 never fires
        model.model.layers[1].self_attn.v_proj.weight[16:32] = 0  # KV group 1 outputs nothing
    dims = model_dims(model.config)
    tensors, _ = collect_importance(model, [windows()])
    scores = activation_scores(tensors, dims)
    assert scores.ffn[2][5] == 0 and scores.ffn[2].argmin() == 5
    assert scores.heads[1][2:].abs().max() == 0  # query heads 2, 3 read KV group 1
    assert scores.groups[1].argmin() == 1 and scores.groups[1][0] > 0


def test_saved_scores_reload_and_refuse_another_model(tiny_llama, tmp_path):
    model = tiny_llama()
    dims = model_dims(model.config)
    tensors, _ = collect_importance(model, [windows()])
    path = tmp_path / "importance" / "activations.safetensors"
    save_importance(path, tensors, dims, {"calibration_samples": 6, "seq_length": 12})
    loaded = load_importance(path, dims)
    assert loaded.keys() == tensors.keys()
    torch.testing.assert_close(loaded["hidden"], tensors["hidden"])
    other = model_dims(tiny_llama(intermediate_size=96).config)
    with pytest.raises(StageError, match="computed for a model with"):
        load_importance(path, other)
    assert load_importance(path, dims, calibration_samples=6, seq_length=12)
    with pytest.raises(StageError, match="stale: it was computed on 6 sequences, fewer than the 8"):
        load_importance(path, dims, calibration_samples=8)
    with pytest.raises(StageError, match="windows of 12 tokens, not 256"):
        load_importance(path, dims, seq_length=256)
    # a file of the first format (MLP scores under ffn.<l>) is refused, not misread
    from safetensors.torch import save_file

    old = {k.replace("mlp.", "ffn."): v.contiguous() for k, v in tensors.items()}
    save_file(
        old,
        str(path),
        metadata={"format_version": "1", **{k: str(v) for k, v in dims.as_dict().items()}},
    )
    with pytest.raises(StageError, match="importance format '1'") as error:
        load_importance(path, dims)
    assert "--stage importance --force" in error.value.hint
    with pytest.raises(StageError, match="missing.safetensors not found") as error:
        load_importance(tmp_path / "missing.safetensors", dims)
    assert "run the importance stage" in error.value.hint


def test_the_same_scores_make_the_same_bytes(tiny_llama, tmp_path):
    """safetensors orders metadata by a per-map random hash; saved files must not depend on it
    (DVC hashes the file: other bytes would re-run every stage after importance)."""
    import json
    import struct

    from safetensors import safe_open

    model = tiny_llama()
    dims = model_dims(model.config)
    tensors, _ = collect_importance(model, [windows()])
    meta = {"calibration_samples": 6, "seq_length": 12, "seed": 7}
    files = []
    for i in range(8):
        path = tmp_path / f"{i}" / "activations.safetensors"
        save_importance(path, tensors, dims, meta)
        files.append(path.read_bytes())
    assert len(set(files)) == 1
    (size,) = struct.unpack("<Q", files[0][:8])
    metadata = json.loads(files[0][8 : 8 + size])["__metadata__"]
    assert list(metadata) == sorted(metadata) and metadata["seed"] == "7"
    with safe_open(str(path), "pt") as handle:  # still a valid file, every tensor intact
        assert handle.metadata() == metadata
        for key, value in tensors.items():
            assert torch.equal(handle.get_tensor(key), value)
