"""Memory-safe entropy coding of integer latents, with the CDF tables stored in the weights.

CompressAI's C++ rANS decoder trusts its input: a cut or crafted stream makes it read past its
buffer (different pixels on each call) or crash the process. Here the same CDF tables drive
``constriction``'s ANS coder (Rust: every read is bounds-checked, bad data is an exception),
and the stream layout is ours (``docs/format.md``, format version 2):

1. the symbols of each table, table by table (table 0 first), in element order: symbol ``s``
   of table ``t`` stands for the value ``offset[t] + s``, except the last one, the escape,
   which stands for a value outside the table (as in CompressAI: it carries the tail mass);
2. for every escape, in element order, the bit length ``b`` (0..20) of its zig-zag code;
3. the ``b - 1`` low bits of each code, grouped by ``b`` from 2 up, in element order.

A decoder knows how many symbols each table holds before it starts (the indexes come from
what was decoded before), decodes exactly that many, and then requires the coder to be
empty: running out of data, data left over, or a stream that is no ANS stream at all is a
:class:`~codec.format.bitstream.FormatError`. Pure table lookups in fixed point: no floating-point
result decides anything, so a stream decodes the same on every machine and thread count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import constriction

from codec.format.bitstream import FormatError

AnsCoder = constriction.stream.stack.AnsCoder
Categorical = constriction.stream.model.Categorical
Uniform = constriction.stream.model.Uniform

ESCAPE_BITS = 20  # an escaped value's zig-zag code is below 2^20: |value| < 2^19 around the table


@dataclass
class CdfTables:
    """CompressAI's quantised CDFs (16-bit precision): ``cdf[t, :length[t]]`` runs from 0 to
    65536 over ``length[t] - 1`` symbols, the last of which is the escape."""

    cdf: np.ndarray  # (T, L) int32
    length: np.ndarray  # (T,) int32
    offset: np.ndarray  # (T,) int32

    @classmethod
    def of(cls, entropy_model: torch.nn.Module) -> CdfTables:
        """The tables of a CompressAI ``EntropyBottleneck`` or ``GaussianConditional`` (after
        ``update()``, or as loaded from a weights file)."""
        tables = cls(entropy_model._quantized_cdf.cpu().numpy().astype(np.int32),
                     entropy_model._cdf_length.cpu().numpy().astype(np.int32).reshape(-1),
                     entropy_model._offset.cpu().numpy().astype(np.int32).reshape(-1))
        if tables.cdf.ndim != 2 or not len(tables.length) == len(tables.offset) == len(tables.cdf):
            raise ValueError("CDF tables are missing or inconsistent (was update() run?)")
        if (tables.length < 3).any() or (tables.length > tables.cdf.shape[1]).any():
            raise ValueError("CDF tables with fewer than two symbols")
        return tables

    def model(self, t: int) -> Categorical:
        """Table ``t`` as a constriction model (exact: frequencies / 2^16 are exact floats)."""
        cdf = self.cdf[t, : self.length[t]].astype(np.float64)
        return Categorical(np.diff(cdf) / 65536.0, perfect=False)


def _check_indexes(indexes: np.ndarray, tables: CdfTables) -> np.ndarray:
    indexes = np.ascontiguousarray(indexes, dtype=np.int64).reshape(-1)
    if indexes.size and (indexes.min() < 0 or indexes.max() >= len(tables.length)):
        raise ValueError("table index out of range")
    return indexes


def _push(coder: AnsCoder, values: np.ndarray | torch.Tensor, indexes: np.ndarray | torch.Tensor,
          tables: CdfTables) -> None:
    """Push one part onto ``coder`` (a stack: parts are pushed in the reverse of decoding order)."""
    values = np.asarray(values).reshape(-1).astype(np.int64)
    indexes = _check_indexes(np.asarray(indexes), tables)
    if values.shape != indexes.shape:
        raise ValueError("values and indexes differ in size")
    n_symbols = tables.length[indexes] - 1  # the escape is symbol n - 1
    s = values - tables.offset[indexes]
    escaped = (s < 0) | (s >= n_symbols - 1)
    symbols = np.where(escaped, n_symbols - 1, s).astype(np.int32)
    tail = s[escaped]
    codes = np.where(tail < 0, -2 * tail - 1, 2 * (tail - (n_symbols[escaped] - 1)))
    if codes.size and codes.max() >= 1 << ESCAPE_BITS:
        raise ValueError(f"a latent value is too far outside its table (more than 2^{ESCAPE_BITS - 1})")
    bits = np.frexp(codes.astype(np.float64))[1].astype(np.int32)  # bit length; 0 for 0

    for b in range(ESCAPE_BITS, 1, -1):
        low = codes[bits == b] - (1 << (b - 1))
        if low.size:
            coder.encode_reverse(low.astype(np.int32), Uniform(1 << (b - 1)))
    if bits.size:
        coder.encode_reverse(bits, Uniform(ESCAPE_BITS + 1))
    order = np.argsort(indexes, kind="stable")
    counts = np.bincount(indexes, minlength=len(tables.length))
    ends = np.cumsum(counts)
    for t in range(len(counts) - 1, -1, -1):
        if counts[t]:
            coder.encode_reverse(symbols[order[ends[t] - counts[t] : ends[t]]], tables.model(t))


def encode(values: np.ndarray | torch.Tensor, indexes: np.ndarray | torch.Tensor, tables: CdfTables) -> bytes:
    """Code integer ``values`` (any shape), each with the table its ``indexes`` entry names."""
    return encode_parts([(values, indexes)], tables)


def encode_parts(parts: list[tuple], tables: CdfTables) -> bytes:
    """Several (values, indexes) parts in one stream, decoded in this order by :class:`Reader`:
    a later part's indexes may depend on the values of the parts before it."""
    coder = AnsCoder()
    for values, indexes in reversed(parts):
        _push(coder, values, indexes, tables)
    return coder.get_compressed().astype("<u4").tobytes()


class Reader:
    """Decodes the parts of one stream in order (:meth:`read`), then :meth:`close` requires that
    nothing is left over. Every damage is a :class:`~codec.format.bitstream.FormatError`."""

    def __init__(self, data: bytes, tables: CdfTables):
        if len(data) % 4:
            raise FormatError("corrupted entropy-coded data (length is not a whole number of words)")
        self.tables, self._empty = tables, not data
        try:
            self.coder = AnsCoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))
        except (ValueError, OverflowError) as e:  # constriction's answer to data that is no ANS stream
            raise FormatError(f"corrupted entropy-coded data ({e})") from None

    def read(self, indexes: np.ndarray | torch.Tensor) -> np.ndarray:
        """The next part's int64 values, in the order (and count) of ``indexes``."""
        tables, coder = self.tables, self.coder
        indexes = _check_indexes(np.asarray(indexes), tables)
        if indexes.size and self._empty:  # coding even one symbol leaves a word: an empty coder is cut data
            raise FormatError("corrupted entropy-coded data (empty stream)")
        try:
            counts = np.bincount(indexes, minlength=len(tables.length))
            order = np.argsort(indexes, kind="stable")
            symbols = np.empty(indexes.size, np.int64)
            start = 0
            for t, count in enumerate(counts):
                if count:
                    symbols[order[start : start + count]] = coder.decode(tables.model(t), int(count))
                    start += count
            n_symbols = tables.length[indexes] - 1
            escaped = symbols == n_symbols - 1
            n_escaped = int(escaped.sum())
            bits = np.zeros(0, np.int64)
            if n_escaped:
                bits = coder.decode(Uniform(ESCAPE_BITS + 1), n_escaped).astype(np.int64)
            codes = np.where(bits > 0, 1, 0).astype(np.int64)
            for b in range(2, ESCAPE_BITS + 1):
                sel = bits == b
                if sel.any():
                    codes[sel] = (1 << (b - 1)) + coder.decode(Uniform(1 << (b - 1)), int(sel.sum()))
        except (ValueError, OverflowError) as e:  # constriction's answer to data that is no ANS stream
            raise FormatError(f"corrupted entropy-coded data ({e})") from None
        tail = np.where(codes & 1, -(codes + 1) // 2, codes // 2 + n_symbols[escaped] - 1)
        s = symbols.copy()
        s[escaped] = tail
        return s + tables.offset[indexes]

    def close(self) -> None:
        if not self.coder.is_empty():
            raise FormatError("corrupted entropy-coded data (data left over after the last symbol)")


def decode(data: bytes, indexes: np.ndarray | torch.Tensor, tables: CdfTables) -> np.ndarray:
    """Inverse of :func:`encode`: the int64 values, in the order (and count) of ``indexes``."""
    reader = Reader(data, tables)
    values = reader.read(indexes)
    reader.close()
    return values


# --- CompressAI's two entropy models, coded through the functions above --------------------

def _medians(bottleneck: torch.nn.Module) -> torch.Tensor:
    return bottleneck.quantiles[:, 0, 1].detach().float().cpu().reshape(1, -1, 1, 1)


def _channel_indexes(shape: tuple[int, ...]) -> np.ndarray:
    C, H, W = shape[-3:]
    return np.broadcast_to(np.arange(C, dtype=np.int64)[:, None, None], (C, H, W))


def encode_factorized(bottleneck: torch.nn.Module, y: torch.Tensor) -> tuple[bytes, torch.Tensor]:
    """An ``EntropyBottleneck`` latent (1, C, H, W) -> (stream, the dequantised latent the
    decoder will see). Each channel has its own table; values are rounded around its median."""
    medians = _medians(bottleneck)
    symbols = torch.round(y.float().cpu() - medians)
    data = encode(symbols.to(torch.int64).numpy(), _channel_indexes(y.shape), CdfTables.of(bottleneck))
    return data, symbols + medians


def decode_factorized(bottleneck: torch.nn.Module, data: bytes, shape: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`encode_factorized`, for a latent of spatial ``shape``."""
    tables = CdfTables.of(bottleneck)
    C = len(tables.length)
    values = decode(data, _channel_indexes((C, *shape)), tables)
    return torch.from_numpy(values.reshape(1, C, *shape)).float() + _medians(bottleneck)


def encode_gaussian(conditional: torch.nn.Module, y: torch.Tensor, scales: torch.Tensor,
                    means: torch.Tensor) -> bytes:
    """A ``GaussianConditional`` latent: each element rounded around its mean, coded with the
    table its scale picks (float64 throughout, as the means and scales are exact)."""
    indexes = conditional.build_indexes(scales)
    symbols = torch.round(y.double().cpu() - means).to(torch.int64)
    return encode(symbols.numpy(), indexes.numpy(), CdfTables.of(conditional))


def decode_gaussian(conditional: torch.nn.Module, data: bytes, scales: torch.Tensor,
                    means: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode_gaussian`: the dequantised latent, float64."""
    indexes = conditional.build_indexes(scales)
    values = decode(data, indexes.numpy(), CdfTables.of(conditional))
    return torch.from_numpy(values).reshape(scales.shape).double() + means


def encode_gaussian_parts(conditional: torch.nn.Module,
                          parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> bytes:
    """Several (latent, scales, means) parts of a ``GaussianConditional`` latent in one stream,
    read back in this order with :func:`read_gaussian` (later parts may be predicted from earlier ones)."""
    return encode_parts([(torch.round(y.double().cpu() - means).to(torch.int64).numpy(),
                          conditional.build_indexes(scales).numpy()) for y, scales, means in parts],
                        CdfTables.of(conditional))


def read_gaussian(reader: Reader, conditional: torch.nn.Module, scales: torch.Tensor,
                  means: torch.Tensor) -> torch.Tensor:
    """The next part of an :func:`encode_gaussian_parts` stream: the dequantised latent, float64."""
    values = reader.read(conditional.build_indexes(scales).numpy())
    return torch.from_numpy(values).reshape(scales.shape).double() + means
