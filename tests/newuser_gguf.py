"""GGUF files for the new-user tests: written with gguf's own writer, weights left out where the test needs it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFWriter


def metadata_only(path: Path) -> Path:
    """A valid header, no tensors, one key: ``general.architecture: llama``."""
    writer = GGUFWriter(str(path), "llama")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return path


def llama(path: Path, vocab: int, hidden: int, *, data: bool = True, vocab_key: bool = True) -> Path:
    """A one-layer llama with complete metadata and one embedding tensor (vocab × hidden float32).

    ``data=False`` leaves the tensor's bytes as a hole (a sparse file of the full size: nothing is
    written or allocated); ``data=True`` writes them, and cutting the file short then corrupts it.
    ``vocab_key=False`` leaves ``llama.vocab_size`` out of the metadata.
    """
    writer = GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_block_count(1)
    writer.add_feed_forward_length(2 * hidden)
    writer.add_head_count(1)
    if vocab_key:
        writer.add_vocab_size(vocab)
    nbytes = vocab * hidden * 4
    writer.add_tensor_info("token_embd.weight", (vocab, hidden), np.dtype(np.float32), nbytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    with path.open("r+b") as handle:
        start = -(-handle.seek(0, 2) // 32) * 32  # the data section starts at the next 32-byte boundary
        if data:
            handle.seek(start)
            handle.write(np.zeros((vocab, hidden), np.float32).tobytes())
        handle.truncate(start + nbytes)
    return path
