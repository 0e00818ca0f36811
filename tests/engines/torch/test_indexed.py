"""The Megatron .bin/.idx writer against Megatron-Core's own reader."""

from __future__ import annotations

import numpy as np
import pytest

from minispec.engines.torch.indexed import IndexedDataset, IndexedDatasetWriter


def megatron(prefix):
    from megatron.core.datasets.indexed_dataset import IndexedDataset as MegatronIndexedDataset

    return MegatronIndexedDataset(str(prefix))


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_documents_round_trip_through_megatron_core(tmp_path, dtype):
    rng = np.random.default_rng(0)
    documents = [rng.integers(0, 60000, size=n).astype(dtype) for n in (5, 1, 300, 17)]
    with IndexedDatasetWriter(tmp_path / "x_text_document", dtype) as writer:
        writer.add_document(documents[0])
        lengths = np.array([len(d) for d in documents[1:]], dtype=np.int32)
        writer.add_documents(lengths, np.concatenate(documents[1:]))
    theirs, ours = (
        megatron(tmp_path / "x_text_document"),
        IndexedDataset(tmp_path / "x_text_document"),
    )
    assert len(theirs) == len(ours) == 4 and theirs.index.dtype == dtype
    assert list(theirs.document_indices) == [0, 1, 2, 3, 4]
    for i, document in enumerate(documents):
        np.testing.assert_array_equal(theirs[i], document)
        np.testing.assert_array_equal(ours[i], document)
    assert ours.num_tokens == sum(map(len, documents))


def test_inconsistent_lengths_and_out_of_range_ids_are_refused(tmp_path):
    prefix = tmp_path / "bad_text_document"
    with pytest.raises(ValueError, match="lengths sum to 3 tokens but 4 ids"):
        with IndexedDatasetWriter(prefix, np.uint16) as writer:
            writer.add_documents(np.array([1, 2], np.int32), np.arange(4, dtype=np.int64))
    with pytest.raises(ValueError, match="out of range for uint16"):
        with IndexedDatasetWriter(prefix, np.uint16) as writer:
            writer.add_document(np.array([70000]))
    assert list(tmp_path.iterdir()) == []  # nothing left, not even .partial files
