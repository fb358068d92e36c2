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
