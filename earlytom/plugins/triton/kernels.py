"""Triton kernels making earlytom.compress's decisions exactly: the paper variant's FrameMerge and TokenSelect
(here), the official variant's compression, selection and attention received (further down).

Parameter order is the one TensorRT's AOT plugins require: input pointers, then int32 scalars, then output
pointers; float hyper-parameters and block sizes are compile-time constants. No output shape depends on
data: merged frames go to a [B, L, D] buffer (the first N valid) with an int32 count, selected tokens to
[K, D'] with their count.

Paper FrameMerge, three launches:
    token_cosine    hidden [B, L, D] -> cos [B-1, L]            grid (L,)    reads hidden once
    merge_plan      cos [B-1, L] -> s [B-1], plan [B], count    grid (1,)    the EMA and pair scan
    weighted_merge  hidden, plan -> merged [B, L, D]            grid (B, cdiv(L*D, BLOCK))
Paper TokenSelect, three launches:
    window_select   scores [N, T], is_static [N] -> keep [N*T]  grid (N,)    one argmax per window
    dynamic_topk    scores, is_static, keep -> frame [K], index [K], count   grid (1,)  sort + compaction
    gather_tokens   tokens [N, T, D'], frame, index -> [K, D']  grid (K, cdiv(D', BLOCK))
"""

import triton
import triton.language as tl

from earlytom.compress import merge

MIN_MERGE_WEIGHT = tl.constexpr(merge.MIN_MERGE_WEIGHT)
NORM_EPS = tl.constexpr(merge.NORM_EPS)


@triton.jit
def token_cosine(hidden, B, L, D, cos, BLOCK_D: tl.constexpr):
    """cos[t, l] = cos(hidden[t, l], hidden[t+1, l]); one program per token l walks the B frames, keeping the
    previous frame's row in registers, so every element of hidden is read once (fp32 accumulation)."""
    tok = tl.program_id(0).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    mask = d < D
    prev = tl.load(hidden + tok * D + d, mask=mask, other=0.0).to(tl.float32)
    prev_norm = tl.sqrt(tl.sum(prev * prev, axis=0))
    for t in range(1, B):
        row = tl.load(hidden + (t * L + tok) * D + d, mask=mask, other=0.0).to(tl.float32)
        norm = tl.sqrt(tl.sum(row * row, axis=0))
        dot = tl.sum(prev * row, axis=0)
        tl.store(cos + (t - 1) * L + tok, dot / tl.maximum(prev_norm * norm, NORM_EPS))
        prev, prev_norm = row, norm


@triton.jit
def _cut_after(s, t, ema, B, ALPHA: tl.constexpr, TAU_SEG: tl.constexpr):
    """(boundary after frame t, EMA e_t): e_0 = s_0, e_t = ALPHA s_t + (1 - ALPHA) e_{t-1}; the last frame
    always ends its segment."""
    inside = t < B - 1
    s_t = tl.load(s + t, mask=inside, other=0.0)
    new = tl.where(t == 0, s_t, ALPHA * s_t + (1 - ALPHA) * ema)
    ema = tl.where(inside, new, ema)
    cut = tl.where(inside, (ema < TAU_SEG).to(tl.int32), 1)
    return cut, ema


@triton.jit
def merge_plan(
    cos,
    B,
    L,
    s,
    first,
    last,
    weight,
    segment,
    is_static,
    count,
    ALPHA: tl.constexpr,
    TAU_SEG: tl.constexpr,
    TAU_MERGE: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """One program: s_t = mean_l cos[t, l]; then the scan of DESIGN.md section 3 as a state machine over
    frames i with the boundary before i, after i and after i+1 in registers. Writes the first N rows of
    first/last [B] int32, weight [B, 2] fp32, segment [B] int32, is_static [B] int32, and count = N."""
    offs = tl.arange(0, BLOCK_L)
    for t in range(0, B - 1):
        acc = tl.zeros([BLOCK_L], dtype=tl.float32)
        for l0 in range(0, L, BLOCK_L):
            acc += tl.load(cos + t * L + l0 + offs, mask=l0 + offs < L, other=0.0)
        tl.store(s + t, tl.sum(acc, axis=0) / L)
    tl.debug_barrier()  # s is read back below

    ema = tl.zeros([], dtype=tl.float32)
    cut_prev = tl.full([], 1, tl.int32)  # frame 0 is a head
    cut_cur, ema = _cut_after(s, 0, ema, B, ALPHA, TAU_SEG)
    cut_next, ema = _cut_after(s, 1, ema, B, ALPHA, TAU_SEG)
    i = 0
    n = 0
    seg = -1
    while i < B:
        static = (1 - cut_prev) * (1 - cut_cur)  # neither head nor tail
        s_i = tl.load(s + i, mask=i < B - 1, other=0.0)
        s_n = tl.load(s + i + 1, mask=i + 1 < B - 1, other=0.0)
        merge = static * (1 - cut_next) * (s_i > TAU_MERGE).to(tl.int32) * (s_i > s_n).to(tl.int32)
        seg += cut_prev
        w0 = tl.maximum(s_i, MIN_MERGE_WEIGHT)
        w1 = tl.maximum(s_n, MIN_MERGE_WEIGHT)
        tl.store(first + n, i)
        tl.store(last + n, i + merge)
        tl.store(weight + 2 * n, tl.where(merge == 1, w0 / (w0 + w1), 1.0))
        tl.store(weight + 2 * n + 1, tl.where(merge == 1, w1 / (w0 + w1), 0.0))
        tl.store(segment + n, seg)
        tl.store(is_static + n, static)
        n += 1
        # Advance by one frame, and by a second one when the pair merged.
        cut_prev, cut_cur = cut_cur, cut_next
        cut_next, ema = _cut_after(s, i + 2, ema, B, ALPHA, TAU_SEG)
        i += 1
        if merge == 1:
            cut_prev, cut_cur = cut_cur, cut_next
            cut_next, ema = _cut_after(s, i + 2, ema, B, ALPHA, TAU_SEG)
            i += 1
    tl.store(count, n)


@triton.jit
def weighted_merge(hidden, first, last, weight, count, LD, merged, BLOCK: tl.constexpr):
    """merged[n] = w[n,0] hidden[first[n]] + w[n,1] hidden[last[n]] for n < count; the second frame is read
    only for merged pairs, so every input frame is read once."""
    n = tl.program_id(0)
    live = n < tl.load(count)
    offs = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = (offs < LD) & live
    a = tl.load(first + n, mask=live, other=0).to(tl.int64)
    b = tl.load(last + n, mask=live, other=0).to(tl.int64)
    w0 = tl.load(weight + 2 * n, mask=live, other=0.0)
    w1 = tl.load(weight + 2 * n + 1, mask=live, other=0.0)
    x = tl.load(hidden + a * LD + offs, mask=valid, other=0.0).to(tl.float32)
    y = tl.load(hidden + b * LD + offs, mask=valid & (b != a), other=0.0).to(tl.float32)
    tl.store(merged + n.to(tl.int64) * LD + offs, (w0 * x + w1 * y).to(merged.dtype.element_ty), mask=valid)


@triton.jit
def _budget(is_static, N, T, K_TARGET, BLOCK_N: tl.constexpr):
    """DESIGN.md section 4 budget: (K, n_s, m, surplus, K_d). K_TARGET = round(r * B * T) from the host."""
    frames = tl.arange(0, BLOCK_N)
    flags = tl.load(is_static + frames, mask=frames < N, other=0)
    n_s = tl.sum(flags, axis=0)
    n_d = N - n_s
    K = tl.minimum(K_TARGET, N * T)
    q = K // N
    rem = K - q * N
    rounded = q + tl.where(2 * rem > N, 1, tl.where(2 * rem == N, q % 2, 0))  # round half to even
    m = tl.minimum(T, tl.maximum(1, rounded))
    m = tl.where((n_s > 0) & (n_s * m > K), K // tl.maximum(n_s, 1), m)
    k_d = K - n_s * m
    surplus = tl.maximum(0, k_d - n_d * T)
    return K, n_s, m, surplus, k_d - surplus


@triton.jit
def window_select(scores, is_static, N, T, K_TARGET, keep, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr):
    """Program f writes keep[f, :]: for a static frame with budget m_f, 1 at the best token (lowest index on
    ties) of each window t * m_f // T == w; zeros for a dynamic frame (dynamic_topk marks those)."""
    f = tl.program_id(0)
    K, n_s, m, surplus, k_d = _budget(is_static, N, T, K_TARGET, BLOCK_N)
    frames = tl.arange(0, BLOCK_N)
    flags = tl.load(is_static + frames, mask=frames < N, other=0)
    rank = tl.sum(tl.where(frames < f, flags, 0), axis=0)  # static frames before f
    extra = surplus // tl.maximum(n_s, 1) + (rank < surplus % tl.maximum(n_s, 1)).to(tl.int32)
    m_f = tl.where(tl.load(is_static + f) == 1, m + extra, 0)
    tok = tl.arange(0, BLOCK_T)
    valid = tok < T
    row = tl.load(scores + f.to(tl.int64) * T + tok, mask=valid, other=0.0).to(tl.float32)
    picked = _window_argmax(row, valid, tok * m_f // T, m_f, tok, BLOCK_T)
    tl.store(keep + f.to(tl.int64) * T + tok, picked, mask=valid)


@triton.jit
def _window_argmax(row, valid, window, count, tok, BLOCK_T: tl.constexpr):
    """[BLOCK_T] int32, 1 at the best token of each window 0 .. count - 1 (lowest index on ties) of `row`."""
    picked = tl.zeros([BLOCK_T], dtype=tl.int32)
    for w in range(0, count):
        inside = valid & (window == w)
        candidates = tl.where(inside, row, float("-inf"))
        best = tl.max(candidates, axis=0)
        first_best = tl.min(tl.where(inside & (candidates == best), tok, BLOCK_T), axis=0)
        picked = tl.where(tok == first_best, 1, picked)
    return picked


@triton.jit
def dynamic_topk(
    scores, is_static, keep, N, T, K_TARGET, frame, index, count, BLOCK: tl.constexpr, BLOCK_N: tl.constexpr
):
    """One program over all N*T tokens: the top K_d dynamic tokens by (score desc, index asc), found by a
    64-step radix select on unsigned keys (score bits in float order, then the inverted index), merged with
    the static picks in `keep`, compacted in temporal then raster order into frame [K], index [K], count."""
    K, n_s, m, surplus, k_d = _budget(is_static, N, T, K_TARGET, BLOCK_N)
    offs = tl.arange(0, BLOCK)
    valid = offs < N * T
    f = offs // T
    dynamic = valid & (tl.load(is_static + f, mask=valid, other=1) == 0)
    key = _order_keys(tl.load(scores + offs, mask=valid, other=0.0).to(tl.float32), offs)
    threshold = _kth_largest(key, dynamic, k_d)  # the k_d-th largest dynamic key
    chosen = dynamic & (key >= threshold) & (k_d > 0)
    chosen = chosen | (tl.load(keep + offs, mask=valid, other=0) == 1)
    _compact(chosen, offs, T, frame, index, count)


@triton.jit
def _compact(chosen, offs, T, frame, index, count):
    """The chosen flat positions offs (frame-major, T per frame), in order -> frame [K], index [K], count = K."""
    position = tl.cumsum(chosen.to(tl.int32), axis=0) - 1
    f = offs // T
    tl.store(frame + position, f, mask=chosen)
    tl.store(index + position, offs - f * T, mask=chosen)
    tl.store(count, tl.sum(chosen.to(tl.int32), axis=0))


@triton.jit
def gather_tokens(tokens, frame, index, count, T, DM, selected, BLOCK: tl.constexpr):
    """selected[k] = tokens[frame[k], index[k]] for k < count; program (k, block) copies one block of D'."""
    k = tl.program_id(0)
    live = k < tl.load(count)
    d = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    row = (tl.load(frame + k, mask=live, other=0) * T + tl.load(index + k, mask=live, other=0)).to(tl.int64)
    x = tl.load(tokens + row * DM + d, mask=live & (d < DM))
    tl.store(selected + k.to(tl.int64) * DM + d, x, mask=live & (d < DM))


# ---------------------------------------------------------------------------------------------------------------
# The official variant (DESIGN.md section 4b), mirroring earlytom.compress.official / select:
#     attention_row_stats   q, k [F, H, L, d] -> row max, row sum [F, H, L]       grid (F*H, cdiv(L, BLOCK_M))
#     attention_received    q, k, stats -> attention [F, L]                       grid (F, cdiv(L, BLOCK_N))
#     window_cosine         hidden [F, L, D] -> cos [F, W, L]                     grid (L, W)
#     official_plan         cos -> similarity [F, W], rows, segments, labels      grid (1,)  the scans
#     weighted_merge        (above) on hidden [F, L*D] and on attention [F, L] with the plan's rows
#     official_keep         scores [N, T], labels -> keep [N, T]                  grid (N,)  top-k / window argmax
#     compact_keep          keep -> frame [K], index [K], count                   grid (1,)
#     gather_tokens         (above)
# Scalar arithmetic of the scans is float32 like the reference's; their launches disable FMA contraction.


@triton.jit
def attention_row_stats(
    q,
    k,
    H,
    L,
    HD,
    row_max,
    row_sum,
    SCALE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """For query rows i of (frame, head) program_id(0): m_i = max_j s_ij and l_i = sum_j exp(s_ij - m_i) with
    s = SCALE * q k^T in float32, streamed over key blocks (online softmax statistics)."""
    fh = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    base = fh * L * HD
    qb = tl.load(q + base + rows[:, None] * HD + d[None, :], mask=(rows[:, None] < L) & (d[None, :] < HD), other=0.0)
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    total = tl.zeros([BLOCK_M], tl.float32)
    for j0 in range(0, L, BLOCK_N):
        cols = j0 + tl.arange(0, BLOCK_N)
        kb = tl.load(
            k + base + cols[:, None] * HD + d[None, :], mask=(cols[:, None] < L) & (d[None, :] < HD), other=0.0
        )
        s = tl.dot(qb, tl.trans(kb), input_precision="ieee", out_dtype=tl.float32) * SCALE
        s = tl.where(cols[None, :] < L, s, float("-inf"))
        new_m = tl.maximum(m, tl.max(s, axis=1))
        total = total * tl.exp(m - new_m) + tl.sum(tl.exp(s - new_m[:, None]), axis=1)
        m = new_m
    tl.store(row_max + fh * L + rows, m, mask=rows < L)
    tl.store(row_sum + fh * L + rows, total, mask=rows < L)


@triton.jit
def attention_received(
    q,
    k,
    row_max,
    row_sum,
    H,
    L,
    HD,
    attention,
    SCALE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """attention[f, j] = mean over heads h and queries i of softmax_j(s_hi)[j], for the key block j of program
    (f, block): recomputes s = SCALE * q k^T block by block with the row statistics, summing columns in
    registers; no [H, L, L] map exists and the sum order is fixed (deterministic)."""
    f = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    d = tl.arange(0, BLOCK_D)
    acc = tl.zeros([BLOCK_N], tl.float32)
    for h in range(0, H):
        base = (f * H + h) * L * HD
        kb = tl.load(
            k + base + cols[:, None] * HD + d[None, :], mask=(cols[:, None] < L) & (d[None, :] < HD), other=0.0
        )
        for i0 in range(0, L, BLOCK_M):
            rows = i0 + tl.arange(0, BLOCK_M)
            live = rows < L
            qb = tl.load(q + base + rows[:, None] * HD + d[None, :], mask=live[:, None] & (d[None, :] < HD), other=0.0)
            m = tl.load(row_max + (f * H + h) * L + rows, mask=live, other=0.0)
            total = tl.load(row_sum + (f * H + h) * L + rows, mask=live, other=1.0)
            s = tl.dot(qb, tl.trans(kb), input_precision="ieee", out_dtype=tl.float32) * SCALE
            p = tl.exp(s - m[:, None]) / total[:, None]
            acc += tl.sum(tl.where(live[:, None], p, 0.0), axis=0)
    tl.store(attention + f * L + cols, acc / (H * L), mask=cols < L)


@triton.jit
def window_cosine(hidden, F, L, D, W, cos, BLOCK_D: tl.constexpr):
    """cos[i, d - 1, l] = cos(hidden[i - d, l], hidden[i, l]) for i >= d, d = program_id(1) + 1 (fp32)."""
    tok = tl.program_id(0).to(tl.int64)
    dist = tl.program_id(1) + 1
    c = tl.arange(0, BLOCK_D)
    mask = c < D
    for i in range(dist, F):
        a = tl.load(hidden + ((i - dist) * L + tok) * D + c, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(hidden + (i * L + tok) * D + c, mask=mask, other=0.0).to(tl.float32)
        norms = tl.sqrt(tl.sum(a * a, axis=0)) * tl.sqrt(tl.sum(b * b, axis=0))
        tl.store(cos + (i * W + dist - 1) * L + tok, tl.sum(a * b, axis=0) / tl.maximum(norms, NORM_EPS))


@triton.jit
def _emit(first, last, weight, n, a, b, w0, w1):
    tl.store(first + n, a)
    tl.store(last + n, b)
    tl.store(weight + 2 * n, w0)
    tl.store(weight + 2 * n + 1, w1)
    return n + 1


@triton.jit
def _segment_rows(similarity, W, s, t, first, last, weight, label, n):
    """Rows of segment [s, t] (section 4b): frames kept as they are for <= 3 frames, else head, the middles'
    scan (merge a pair when sig_j > tau_m and sig_j > sig_j+1; the last pair on sig_j > tau_m alone, weight 1;
    the last middle frame is never emitted alone: the released code's quirk), tail. Labels: middles static."""
    for i in range(s, t + 1):
        tl.store(label + i, ((i > s) & (i < t)).to(tl.int32))
    if t - s + 1 <= 3:
        for i in range(s, t + 1):
            n = _emit(first, last, weight, n, i, i, 1.0, 0.0)
    else:
        n = _emit(first, last, weight, n, s, s, 1.0, 0.0)
        tau_m = tl.load(similarity + t * W + t - s - 1)
        final = t - s - 3  # index of the last pair (m_final, m_final+1) of the J = t - s - 1 middles
        j = 0
        while j <= final:
            sig = tl.load(similarity + (s + 2 + j) * W)
            nxt = tl.load(similarity + (s + 3 + j) * W, mask=j < final, other=0.0)
            total = sig + nxt
            w = tl.where((j < final) & (total != 0.0), tl.math.div_rn(sig, tl.where(total != 0.0, total, 1.0)), 1.0)
            merge = (sig > tau_m) & ((j == final) | (sig > nxt))
            if merge:
                n = _emit(first, last, weight, n, s + 1 + j, s + 2 + j, w, 1.0 - w)
                j += 2
            else:
                n = _emit(first, last, weight, n, s + 1 + j, s + 1 + j, 1.0, 0.0)
                j += 1
        n = _emit(first, last, weight, n, t, t, 1.0, 0.0)
    return n


@triton.jit
def official_plan(
    cos,
    F,
    L,
    W,
    similarity,
    first,
    last,
    weight,
    segments,
    label,
    counts,
    ALPHA: tl.constexpr,
    BETA: tl.constexpr,
    TAU_SEG: tl.constexpr,
    MAX_WINDOW: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """One program: similarity[i, w] = mean_l cos[i, w, l]; then section 4b's segmentation (EMA against the
    segment's first frame, reset to 1, window cap) and each segment's rows as it closes. Writes first/last [F]
    int32, weight [F, 2] fp32 (the first N rows), segments [F, 2] int32 (the first S), label [F] int32
    (1 = static), counts = (N, S)."""
    offs = tl.arange(0, BLOCK_L)
    for iw in range(W, F * W):  # rows i >= 1 (row 0 has no earlier frame)
        acc = tl.zeros([BLOCK_L], dtype=tl.float32)
        for l0 in range(0, L, BLOCK_L):
            acc += tl.load(cos + iw * L + l0 + offs, mask=l0 + offs < L, other=0.0)
        tl.store(similarity + iw, tl.sum(acc, axis=0) / L)
    tl.debug_barrier()  # similarity is read back below

    start = 0
    ema = tl.full([], 1.0, tl.float32)
    n = 0
    num_segments = 0
    for i in range(1, F):
        ema = ALPHA * tl.load(similarity + i * W + i - start - 1) + BETA * ema
        if (ema < TAU_SEG) | (i - start + 1 >= MAX_WINDOW):
            tl.store(segments + 2 * num_segments, start)
            tl.store(segments + 2 * num_segments + 1, i - 1)
            num_segments += 1
            n = _segment_rows(similarity, W, start, i - 1, first, last, weight, label, n)
            start = i
            ema = tl.full([], 1.0, tl.float32)
    tl.store(segments + 2 * num_segments, start)
    tl.store(segments + 2 * num_segments + 1, F - 1)
    n = _segment_rows(similarity, W, start, F - 1, first, last, weight, label, n)
    tl.store(counts, n)
    tl.store(counts + 1, num_segments + 1)


@triton.jit
def _order_keys(x, offs):
    """Unique uint64 keys ordering (score desc, index asc) as unsigned descending: score bits in float order,
    then the inverted index (x float32; -0.0 compares equal to +0.0 as torch does)."""
    bits = (x + 0.0).to(tl.uint32, bitcast=True).to(tl.uint64)
    ordered = tl.where(bits >= 0x80000000, bits ^ 0xFFFFFFFF, bits | 0x80000000)
    return (ordered << 32) | (0xFFFFFFFF - offs.to(tl.uint64))


@triton.jit
def _kth_largest(key, eligible, k):
    """The k-th largest of the eligible keys (a 64-step radix select; 0 when k = 0): key >= it picks the top k."""
    threshold = tl.zeros([], dtype=tl.uint64)
    for bit in range(63, -1, -1):
        candidate = threshold | (tl.full([], 1, tl.uint64) << bit)
        if tl.sum((eligible & (key >= candidate)).to(tl.int32), axis=0) >= k:
            threshold = candidate
    return threshold


@triton.jit
def official_keep(scores, label, N, T, K_DYNAMIC, WINDOWS, keep, BLOCK_T: tl.constexpr):
    """Program f writes keep[f, :]: a dynamic frame (label 0) its top K_DYNAMIC tokens by (score desc, index asc);
    a static frame the best token of each of WINDOWS raster windows (sizes T // WINDOWS, the first T % WINDOWS one
    larger; lowest index on ties)."""
    f = tl.program_id(0)
    tok = tl.arange(0, BLOCK_T)
    valid = tok < T
    row = tl.load(scores + f.to(tl.int64) * T + tok, mask=valid, other=0.0).to(tl.float32)
    if tl.load(label + f) == 0:
        key = _order_keys(row, tok)
        picked = (valid & (key >= _kth_largest(key, valid, K_DYNAMIC)) & (K_DYNAMIC > 0)).to(tl.int32)
    else:
        size = T // WINDOWS
        split = (T % WINDOWS) * (size + 1)  # tokens in the larger windows
        window = tl.where(tok < split, tok // (size + 1), T % WINDOWS + (tok - split) // tl.maximum(size, 1))
        picked = _window_argmax(row, valid, window, WINDOWS, tok, BLOCK_T)
    tl.store(keep + f.to(tl.int64) * T + tok, picked, mask=valid)


@triton.jit
def compact_keep(keep, N, T, frame, index, count, BLOCK: tl.constexpr):
    """One program: the kept tokens of keep [N, T] in temporal, then raster order -> frame [K], index [K], count."""
    offs = tl.arange(0, BLOCK)
    _compact(tl.load(keep + offs, mask=offs < N * T, other=0) == 1, offs, T, frame, index, count)
