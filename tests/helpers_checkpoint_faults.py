"""Faults injected into Orbax checkpoints on disk, as a bad copy or a bad disk would make."""

import pathlib


def params_data_file(step_dir) -> pathlib.Path:
    """The largest data file of a step's parameters (Orbax OCDBT layout)."""
    files = [p for p in pathlib.Path(step_dir, "params").rglob("*") if p.is_file()
             and p.parent.name == "d"]
    return max(files, key=lambda p: p.stat().st_size)


def flip_byte(path, offset: int | None = None, mask: int = 0x40) -> None:
    """XORs one byte of `path` (default: the middle one) with `mask`."""
    data = bytearray(pathlib.Path(path).read_bytes())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= mask
    pathlib.Path(path).write_bytes(bytes(data))
