"""Reading compiled HLO text: the computations a named loop runs and the gathers in them."""

from ssrl_jax.benchmarks import hlo

# The shape of XLA's TPU HLO text, cut down: a decode loop whose body runs a layer scan
# (a nested while) that gathers one layer's weight, an async gather of an activation in
# the loop body, and a weight gather outside the loop (before it: allowed).
TEXT = """\
HloModule jit_train_step, entry_computation_layout={()->()}

%layer_body (p.1: (s32[], bf16[4,64,32])) -> (s32[], bf16[4,64,32]) {
  %p.1 = (s32[], bf16[4,64,32]{2,1,0}) parameter(0)
  %gte.1 = bf16[4,64,32]{2,1,0} get-tuple-element(%p.1), index=1
  %slice.1 = bf16[1,32,32]{2,1,0} fusion(%gte.1), kind=kLoop, calls=%slice_fusion
  %all-gather.1 = bf16[1,64,32]{2,1,0:T(8,128)(2,1)} all-gather(%slice.1), channel_id=1, replica_groups=[2,2]<=[4], dimensions={1}, metadata={op_name="jit(train_step)/decode_loop/while/body/while/body/dot_general" stack_frame_id=3}
  ROOT %t.1 = (s32[], bf16[4,64,32]{2,1,0}) tuple(%c, %gte.1)
}

%slice_fusion (q: bf16[4,64,32]) -> bf16[1,32,32] {
  %q = bf16[4,64,32]{2,1,0} parameter(0)
  ROOT %s = bf16[1,32,32]{2,1,0} slice(%q), slice={[0:1], [0:32], [0:32]}
}

%layer_cond (p.2: (s32[], bf16[4,64,32])) -> pred[] {
  ROOT %lt = pred[] compare(%a, %b), direction=LT
}

%decode_body (p.3: (s32[], f32[8,64])) -> (s32[], f32[8,64]) {
  %p.3 = (s32[], f32[8,64]{1,0}) parameter(0)
  %w.1 = (s32[], bf16[4,64,32]{2,1,0}) while(%init), condition=%layer_cond, body=%layer_body, metadata={op_name="jit(train_step)/decode_loop/while/body/while" stack_frame_id=4}
  %ags = (f32[4,64]{1,0}, f32[8,64]{1,0}) all-gather-start(%h), channel_id=2, replica_groups=[2,2]<=[4], dimensions={0}, metadata={op_name="jit(train_step)/decode_loop/while/body/add"}
  %agd = f32[8,64]{1,0} all-gather-done(%ags)
  ROOT %t.3 = (s32[], f32[8,64]{1,0}) tuple(%i, %agd)
}

%decode_cond (p.4: (s32[], f32[8,64])) -> pred[] {
  ROOT %lt.4 = pred[] compare(%a, %b), direction=LT
}

ENTRY %main.1 (arg: bf16[4,32,32]) -> f32[8,64] {
  %arg = bf16[4,32,32]{2,1,0} parameter(0)
  %all-gather.9 = bf16[4,64,32]{2,1,0} all-gather(%arg), channel_id=9, replica_groups=[2,2]<=[4], dimensions={1}, metadata={op_name="jit(train_step)/rollout/all-gather"}
  %w.2 = (s32[], f32[8,64]{1,0}) while(%init2), condition=%decode_cond, body=%decode_body, metadata={op_name="jit(train_step)/decode_loop/while" stack_frame_id=5}
  ROOT %out = f32[8,64]{1,0} get-tuple-element(%w.2), index=1
}
"""


def test_the_named_loop_reaches_nested_loops_and_fusions_only():
    comps = hlo.computations(TEXT)
    assert set(comps) == {"layer_body", "slice_fusion", "layer_cond", "decode_body",
                          "decode_cond", "main.1"}
    assert hlo.loop_computations(comps, "decode_loop") == {
        "decode_body", "decode_cond", "layer_body", "layer_cond", "slice_fusion"}
    assert hlo.loop_computations(comps, "no_such_scope") == set()


def test_gathers_in_the_loop_with_their_output_shapes():
    comps = hlo.computations(TEXT)
    inside = hlo.gathers_in(comps, hlo.loop_computations(comps, "decode_loop"))
    assert [(c.computation, c.opcode, c.dtype, c.shape) for c in inside] == [
        ("decode_body", "all-gather-start", "f32", (8, 64)),
        ("layer_body", "all-gather", "bf16", (1, 64, 32))]
    assert inside[1].bytes == 64 * 32 * 2
    assert len(hlo.gathers_in(comps, comps)) == 3  # the one before the loop too


def test_weight_gathers_are_told_from_activation_gathers_by_shape():
    comps = hlo.computations(TEXT)
    inside = hlo.gathers_in(comps, hlo.loop_computations(comps, "decode_loop"))
    # A stacked [layers, embed, heads] weight on a 2 x 2 mesh; rows are 8 x 64 activations.
    shapes = hlo.weight_shapes([(4, 64, 32), (64,)], [2, 2])
    assert (64, 32) in shapes and (32, 32) in shapes and (4, 16, 8) in shapes
    assert [hlo.is_weight(c, shapes) for c in inside] == [False, True]
    # Vectors are never counted (a norm scale looks like one row's hidden state).
    vector = hlo.Collective("c", "all-gather", "f32", (1, 64), "")
    assert not hlo.is_weight(vector, shapes)


# Collectives in the forms XLA's TPU HLO writes them, and a splash attention kernel whose
# backend_config spans lines (one of them starting with "}}"): the computation goes on
# after it.
COLLECTIVES = """\
HloModule jit_learn, entry_computation_layout={()->()}

%wrapped_reduce_scatter (p.0: f32[64,32]) -> f32[16,32] {
  %p.0 = f32[64,32]{1,0} parameter(0)
  ROOT %reduce-scatter.1 = f32[16,32]{1,0} reduce-scatter(%p.0), channel_id=3, replica_groups=[2,4]<=[8], dimensions={0}, to_apply=%add
}

ENTRY %main.2 (a: bf16[8,128]) -> bf16[8,128] {
  %a = bf16[8,128]{1,0} parameter(0)
  %ags = (bf16[2,128]{1,0}, bf16[8,128]{1,0}) all-gather-start(%a), channel_id=1, replica_groups={{0,1,2,3},{4,5,6,7}}, dimensions={0}
  %agd = bf16[8,128]{1,0} all-gather-done(%ags)
  %ar = f32[1024]{0} all-reduce(%x), channel_id=2, replica_groups={}, to_apply=%add
  %rs = ((f32[64,32]{1,0}), f32[16,32]{1,0}) async-start(%y), calls=%wrapped_reduce_scatter
  %cp = (f32[100]{0}, f32[100]{0}, u32[], u32[]) collective-permute-start(%z), channel_id=4, source_target_pairs={{0,1},{1,0}}
  %splash_mha_fwd_segmented.1 = (f32[512,128]{1,0}, f32[2,4,256,128]{3,2,1,0}, bf16[2,4,256,64]{3,2,1,0}) custom-call(%q, %k, %v), custom_call_target="tpu_custom_call", backend_config={"custom_call_config": {"body": "abc",
"xprof_metadata":"{\\"block_q\\": 512}"
}}, metadata={op_name="jit(learn)/splash_mha_fwd"}
  %splash_mha_dkv_segmented.1 = (bf16[2,1,256,64]{3,2,1,0}, bf16[2,1,256,64]{3,2,1,0}) custom-call(%q, %k, %v), custom_call_target="tpu_custom_call", backend_config={}
  ROOT %out = bf16[8,128]{1,0} copy(%agd)
}
"""


def test_a_custom_call_config_over_several_lines_does_not_end_its_computation():
    comps = hlo.computations(COLLECTIVES)
    assert set(comps) == {"wrapped_reduce_scatter", "main.2"}
    assert any("splash_mha_dkv" in line for line in comps["main.2"])
    assert comps["main.2"][-1].strip().startswith("ROOT %out")


def test_every_collective_is_counted_once_with_the_bytes_a_chip_moves():
    transfers = hlo.transfers(hlo.computations(COLLECTIVES), num_devices=8)
    by_kind = {t.opcode: t for t in transfers}
    assert sorted(by_kind) == ["all-gather-start", "all-reduce", "collective-permute-start",
                               "reduce-scatter"]
    gather = by_kind["all-gather-start"]     # the output, gathered over groups of 4
    assert (gather.shape, gather.group_size) == ((8, 128), 4)
    assert gather.ici_bytes == 8 * 128 * 2 * 3 / 4
    reduce = by_kind["all-reduce"]           # every device: group of 8
    assert (reduce.group_size, reduce.ici_bytes) == (8, 2 * 4096 * 7 / 8)
    scatter = by_kind["reduce-scatter"]      # [2, 4]<=[8]: 2 groups of 4; input 4x output
    assert (scatter.group_size, scatter.ici_bytes) == (4, 16 * 32 * 4 * 3)
    assert by_kind["collective-permute-start"].ici_bytes == 400


def test_splash_kernels_are_priced_by_their_output_shape():
    # Forward: [2 rows, 4 heads, T=256, Dh=64] -> 2 * (2*4*256*64) * 256 (not its scratch or
    # its lane-padded softmax statistics); dkv on one KV head per row with 4 query heads
    # each: 4 * (2*1*256*64) * 256 * 4.
    flops = hlo.splash_flops(hlo.computations(COLLECTIVES), q_per_kv=4, head_dim=64)
    assert flops == 2 * (2 * 4 * 256 * 64) * 256 + 4 * (2 * 256 * 64) * 256 * 4
