"""The explanation registry: what every trace point means, written once.

Each entry is keyed by a trace-point pattern (`blocks.*.attn.q`: `*` is the block index) and says
what the tensor is, its formula, its shape in words, what to look for, the usual bug, and the
config switch that breaks it, with the experiment that shows what breaks (`break_it`: the
experiment's declaration holds the switch and what it breaks, so the text exists once). Entries whose key starts with `topic:` explain a step
of the walk-through that is not a single tensor (the rotary tables, the gradient flow...).

The terminal walk-through, the HTML page, the markdown export, the reference docs and the
learner's grader all read from here; nothing else holds this text.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass

from glassgpt.experiments.declarations import break_it
from glassgpt.model.config import GPTConfig


@dataclass(frozen=True)
class Explanation:
    key: str
    title: str
    meaning: str
    formula: str = ""
    shape: str = ""
    look_for: str = ""
    common_bug: str = ""
    experiment: str = ""
    when: Callable[[GPTConfig], bool] = lambda config: True  # emitted for this config?
    mistakes: tuple["KnownMistake", ...] = ()  # wrong versions the learner's grader recognises here


@dataclass(frozen=True)
class KnownMistake:
    id: str  # stable identifier, reported by `glassgpt learn check --json`
    description: str
    hint: str


ENTRIES: list[Explanation] = [
    # -- embedding ------------------------------------------------------------------------------
    Explanation(
        "embed.tok", "Token embedding",
        "Each token id selects one row of the embedding matrix: the model's first picture of the token.",
        "x = wte[idx]", "(batch, time, n_embd)",
        "Rows start random; after training, tokens used alike get similar rows.",
        "Indexing with ids beyond vocab_size (the tokenizer and model disagree).",
        "--vocab-size 512 (a smaller table, more tokens per text)",
    ),
    Explanation(
        "embed.pos", "Learned position embedding",
        "A second table, indexed by position, added to the token embedding so the model knows order.",
        "x = wte[idx] + wpe[position]", "(time, n_embd), broadcast over the batch",
        "It only covers sequence_len positions: the model cannot read further than it was built for.",
        "Indexing positions from 0 on every decode step instead of from the cache position.",
        break_it("positions", "none"),
        when=lambda c: c.position == "learned",
    ),
    Explanation(
        "embed.norm", "Embedding norm",
        "Normalise the embedding before the first block, so every token enters the stream at the same scale.",
        "x = x / sqrt(mean(x²) + eps)", "(batch, time, n_embd)",
        "The RMS of every vector is 1 (before any learned gain).",
        "Normalising over the wrong dimension (time instead of channels).",
        "--embed-norm off",
        when=lambda c: c.embed_norm,
    ),
    # -- one block: attention --------------------------------------------------------------------
    Explanation(
        "blocks.*.resid.pre", "Residual stream (block input)",
        "The running sum every block reads from and writes to; each block adds its update to it.",
        "x", "(batch, time, n_embd)",
        "Its norm grows block by block as updates are added.",
        "Overwriting the stream instead of adding to it.",
        break_it("no-residual"),
    ),
    Explanation(
        "blocks.*.attn.norm", "Attention input norm",
        "Pre-norm: attention reads a normalised copy of the stream, the stream itself is not changed.",
        "h = norm(x)", "(batch, time, n_embd)",
        "RMS 1 per position (RMSNorm) or mean 0, variance 1 (LayerNorm).",
        "Epsilon outside the square root: x / (sqrt(mean(x²)) + eps).",
        break_it("no-norm", "post-norm"),
    ),
    Explanation(
        "blocks.*.attn.q", "Query projection",
        "What each position is looking for, one vector per head.",
        "q = h @ W_qᵀ, split into heads", "(batch, time, n_head, head_dim)",
        "The head split is a reshape of n_embd into n_head x head_dim, no copy.",
        "Splitting heads with the wrong reshape order (time and heads mixed).",
        "--head-dim 32 (more, smaller heads)",
    ),
    Explanation(
        "blocks.*.attn.k", "Key projection",
        "What each position offers to be found by; compared with every query.",
        "k = h @ W_kᵀ", "(batch, time, n_kv_head, head_dim)",
        "With grouped-query attention there are fewer key heads than query heads.",
        "Giving keys n_head heads when the model has n_kv_head.",
        break_it("gqa", "MQA, 1 kv head"),
    ),
    Explanation(
        "blocks.*.attn.v", "Value projection",
        "The content each position hands over when attended to.",
        "v = h @ W_vᵀ", "(batch, time, n_kv_head, head_dim)",
        "Values carry content, not position: with rotary embedding only q and k are rotated.",
        "Rotating v with RoPE as well.",
        break_it("gqa", "MQA, 1 kv head"),
    ),
    Explanation(
        "blocks.*.attn.q_rot", "Query after rotary embedding",
        "Each pair of query dimensions is rotated by an angle proportional to the token's position.",
        "(q₁, q₂) → (q₁ cos θ - q₂ sin θ, q₁ sin θ + q₂ cos θ), θ = position x base^(-2i/head_dim)",
        "(batch, time, n_head, head_dim)",
        "The vector length is unchanged; position 0 is not rotated at all.",
        "Pairing adjacent dimensions (0,1) where the tables pair halves (i, i + head_dim/2).",
        break_it("positions", "learned"),
        when=lambda c: c.position == "rope",
    ),
    Explanation(
        "blocks.*.attn.k_rot", "Key after rotary embedding",
        "Keys are rotated like queries, so q·k depends only on how far apart the two tokens are.",
        "same rotation as q", "(batch, time, n_kv_head, head_dim)",
        "q_i·k_j changes with i - j, not with i or j alone.",
        "Rotating keys by a different position offset than queries during cached decoding.",
        break_it("positions", "none"),
        when=lambda c: c.position == "rope",
    ),
    Explanation(
        "blocks.*.attn.q_norm", "Query norm (QK-norm)",
        "Queries are RMS-normalised per head, which bounds every attention score.",
        "q = q / sqrt(mean(q²) + eps) over head_dim", "(batch, time, n_head, head_dim)",
        "Each head vector has RMS 1, so |q·k|/sqrt(d) ≤ sqrt(d).",
        "Normalising over all heads at once instead of per head.",
        break_it("softcap-qk-norm", "QK-norm off"),
        when=lambda c: c.qk_norm,
    ),
    Explanation(
        "blocks.*.attn.k_norm", "Key norm (QK-norm)",
        "Keys are RMS-normalised per head, like queries.",
        "k = k / sqrt(mean(k²) + eps) over head_dim", "(batch, time, n_kv_head, head_dim)",
        "Each head vector has RMS 1.", "Normalising keys but not queries.", break_it("softcap-qk-norm", "QK-norm off"),
        when=lambda c: c.qk_norm,
    ),
    Explanation(
        "blocks.*.attn.k_rep", "Keys repeated for grouped-query attention",
        "Each key head serves n_head / n_kv_head query heads; repeating it lines the heads up.",
        "k.repeat_interleave(n_head // n_kv_head, dim=heads)", "(batch, n_head, time, head_dim)",
        "Query head h reads key head h // group. With n_kv_head = n_head this is the keys unchanged.",
        "Repeating with tile order (h % n_kv_head) where the weights assume h // group.",
        break_it("gqa", "MQA, 1 kv head"),
    ),
    Explanation(
        "blocks.*.attn.v_rep", "Values repeated for grouped-query attention",
        "Values are repeated exactly like keys.", "v.repeat_interleave(n_head // n_kv_head, dim=heads)",
        "(batch, n_head, time, head_dim)", "Identical copies within each group of heads.",
        "Repeating keys but not values.", break_it("gqa", "GQA, 2 kv heads"),
    ),
    Explanation(
        "blocks.*.attn.scores", "Attention scores",
        "How well each query matches each key: one number per (query position, key position) per head.",
        "scores = q @ kᵀ / (temperature x sqrt(head_dim))", "(batch, n_head, time_q, time_k)",
        "Scaling by 1/sqrt(head_dim) keeps the scores' spread near 1 when q and k have unit entries.",
        "No 1/sqrt(d) scaling, or scaling by d: the softmax becomes too sharp or too flat.",
        break_it("attention-temperature", "T = 4"),
    ),
    Explanation(
        "blocks.*.attn.scores_masked", "Causal mask",
        "Scores of future keys are set to -inf, so after the softmax a token cannot look ahead.",
        "scores[i, j] = -inf where j > i", "(batch, n_head, time_q, time_k)",
        "The upper triangle is -inf; the diagonal is kept (a token sees itself).",
        "Masking after the softmax (rows no longer sum to 1) or masking the diagonal too.",
        break_it("no-causal-mask"),
        when=lambda c: c.causal,
    ),
    Explanation(
        "blocks.*.attn.pattern", "Attention pattern (softmax)",
        "Scores turned into weights: each row is a probability distribution over the keys a query may see.",
        "pattern = softmax(scores, dim=keys)", "(batch, n_head, time_q, time_k)",
        "Every row sums to 1; heads differ: some look at the previous token, some spread out.",
        "Softmax over the query dimension instead of the key dimension (columns sum to 1).",
        break_it("attention-temperature", "T = 0.25"),
    ),
    Explanation(
        "blocks.*.attn.z", "Weighted sum of values (per head)",
        "Each head's output: the values averaged with the attention weights.",
        "z = pattern @ v", "(batch, time, n_head, head_dim)",
        "A position that attends to one key copies that key's value.",
        "Multiplying by k instead of v.",
        break_it("gqa", "MQA, 1 kv head"),
    ),
    Explanation(
        "blocks.*.attn.out", "Attention output projection",
        "Heads are concatenated and mixed back to the stream's width; this is what attention adds.",
        "out = concat(z) @ W_oᵀ", "(batch, time, n_embd)",
        "Zero at initialisation in the nanochat family (zero_init_out): the block starts as the identity.",
        "Concatenating heads in a different order than the split (time/head transposed).",
        "--zero-init-out off",
    ),
    Explanation(
        "blocks.*.resid.mid", "Residual stream after attention",
        "The stream with attention's update added.",
        "x = x + attn(norm(x))   (post-norm: x = norm(x + attn(x)))", "(batch, time, n_embd)",
        "resid.mid = resid.pre + attn.out exactly (pre-norm).",
        "Adding the normalised input instead of the stream (x = norm(x) + attn(norm(x))).",
        break_it("no-residual"),
    ),
    # -- one block: MLP --------------------------------------------------------------------------
    Explanation(
        "blocks.*.mlp.norm", "MLP input norm",
        "The MLP reads a normalised copy of the stream.", "h = norm(x)", "(batch, time, n_embd)",
        "Same statistics as the attention input norm.", "Reusing the attention norm's output (stale input).",
        break_it("no-norm", "no norm"),
    ),
    Explanation(
        "blocks.*.mlp.up", "MLP expansion",
        "Each position is projected to a wider space (mlp_ratio x n_embd) where features can be separated.",
        "u = h @ W_upᵀ", "(batch, time, 4 x n_embd)",
        "Roughly zero-mean, about unit spread at initialisation.",
        "Expanding by the wrong ratio.", "--mlp-ratio 2",
    ),
    Explanation(
        "blocks.*.mlp.act", "MLP activation",
        "The non-linearity: without it the whole MLP would be one linear map.",
        "relu2: max(0, u)²   gelu: u·Φ(u)   relu: max(0, u)   silu: u·σ(u)", "(batch, time, 4 x n_embd)",
        "ReLU and ReLU² set about half the units to exactly 0 (sparsity), and ReLU² squares the rest; "
        "GELU and SiLU are smooth: they let small negative values through (GELU's minimum is about -0.17, "
        "SiLU's about -0.28) and make almost nothing exactly 0.",
        "The family's activation swapped for another: ReLU where ReLU² was meant (no square), or exact "
        "GELU where GPT-2's tanh approximation was meant.",
        break_it("activations", "ReLU"),
    ),
    Explanation(
        "blocks.*.mlp.out", "MLP projection back",
        "The wide features projected back to the stream's width: what the MLP adds.",
        "m = a @ W_downᵀ", "(batch, time, n_embd)",
        "Zero at initialisation in the nanochat family.", "Forgetting the projection back (shape mismatch).",
        "--zero-init-out off",
    ),
    Explanation(
        "blocks.*.resid.post", "Residual stream (block output)",
        "The stream with the MLP's update added: the next block's input.",
        "x = x + mlp(norm(x))", "(batch, time, n_embd)",
        "resid.post = resid.mid + mlp.out exactly (pre-norm).",
        "Applying the residual twice (x + x + mlp(x)).", break_it("no-residual"),
    ),
    # -- head and loss ---------------------------------------------------------------------------
    Explanation(
        "final.norm", "Final norm",
        "The last stream is normalised before the head reads it.", "x = norm(x)", "(batch, time, n_embd)",
        "RMS 1 per position.", "Skipping it with pre-norm blocks (the head sees an unnormalised stream).",
        break_it("no-norm", "no norm"),
    ),
    Explanation(
        "lm_head.logits_raw", "Logits (before softcap)",
        "One score per vocabulary entry per position: how likely each token is to come next.",
        "logits = x @ W_headᵀ   (tied: W_head = wte)", "(batch, time, vocab_size)",
        "All zero at initialisation with a zero head: the first prediction is uniform.",
        "Computing logits for the last position only while training (no loss on the others).",
        break_it("tied-embeddings"),
    ),
    Explanation(
        "lm_head.logits", "Logits (after softcap)",
        "Logits squashed smoothly into (-c, c), so no single logit can run away.",
        "logits = c · tanh(logits / c)", "(batch, time, vocab_size)",
        "Equal to the raw logits when they are small; capped near ±c when large.",
        "c · tanh(logits) (forgetting to divide by c first).",
        break_it("softcap-qk-norm", "softcap off"),
    ),
    Explanation(
        "loss.per_token", "Cross-entropy per token",
        "How surprised the model is by each actual next token: -ln p(target).",
        "loss_t = -log softmax(logits_t)[target_t]", "(batch, time)",
        "ln(vocab_size) for a uniform guess; 0 only for a certain, correct prediction.",
        "Targets not shifted by one (predicting the current token instead of the next).",
        break_it("no-causal-mask"),
    ),
    Explanation(
        "loss", "Loss",
        "The mean cross-entropy over counted targets: the single number training lowers.",
        "loss = mean(loss_t over targets ≠ -1)", "()",
        "Starts near ln(vocab_size); ignored targets (-1) do not count.",
        "Dividing by all positions instead of the counted ones (masked batches look better than they are).",
        "--matrix-lr 0.2 (too large a step: the loss jumps)",
    ),
    # -- topics of the walk-through ----------------------------------------------------------------
    Explanation(
        "topic:tokens", "Token ids",
        "The text as the tokenizer cut it: one integer per piece, looked up in the vocabulary.",
        "idx = tokenizer.encode(text)", "(batch, time)",
        "Common words are one token; rare words split into several.",
    ),
    Explanation(
        "topic:loss_mask", "The loss mask",
        "A chat conversation is rendered with special tokens around each turn, and the loss counts only "
        "what the model should learn to write: the assistant's text, its tool calls and <|assistant_end|>. "
        "The user's words, the system prompt and the calculator's results are context, not targets: "
        "their target is set to -1, so cross-entropy gives them 0 and the mean is over the counted ones.",
        "loss = Σ mask_t · loss_t / Σ mask_t", "(batch, time), 0 where the mask is 0",
        "Masked positions show a loss of exactly 0; the loss is the mean over the counted positions only.",
        "Averaging over every position (masked ones included): the loss looks smaller, and a batch with "
        "few assistant tokens gets too little weight.",
    ),
    Explanation(
        "topic:rope", "Rotary position embedding (RoPE)",
        "Position enters attention by rotating queries and keys; values are not rotated. The rotation angles "
        "come from fixed cos/sin tables (buffers, not parameters: they are never trained and are rebuilt, not "
        "saved). Pair i turns base^(-2i/head_dim) radians per token: the first pairs turn fast and see local "
        "order, the last pairs turn slowly and see far context. Because both q and k are rotated, their dot "
        "product depends only on the distance between the tokens.",
        "θ(position, i) = position · base^(-2i/head_dim)", "cos, sin: (sequence_len, head_dim / 2)",
    ),
    Explanation(
        "topic:prenorm", "Pre-norm block",
        "Each block reads a normalised copy of the stream and adds its update to the stream itself, so the "
        "stream is a sum of updates and gradients reach early blocks directly through the additions.",
        "x = x + attn(norm(x));  x = x + mlp(norm(x))",
        experiment=break_it("no-norm", "post-norm"),
    ),
    Explanation(
        "topic:gqa", "Grouped-query attention",
        "Fewer key/value heads than query heads: each key/value head is shared by a group of query heads. "
        "Attention is as expressive per query head, while the KV cache (and its memory traffic when "
        "generating) shrinks by the group size.",
        "group = n_head / n_kv_head",
        experiment=break_it("gqa", "MQA, 1 kv head"),
    ),
    Explanation(
        "topic:transpose", "Heads become a batch dimension",
        "For attention, (batch, time, heads, head_dim) is transposed to (batch, heads, time, head_dim): each "
        "head is then an independent attention over time, computed in one batched matmul.",
        "q.transpose(1, 2)",
    ),
    Explanation(
        "topic:gradients", "Gradient flow",
        "After the loss, backward computes how much each tensor should change. Gradient norms per layer show "
        "whether the signal reaches the first blocks (residual connections carry it) or vanishes or explodes.",
        "grad = ∂loss/∂tensor",
        look_for="Similar gradient norms across layers; a layer far below the others is not learning.",
        experiment=break_it("no-residual"),
    ),
    Explanation(
        "topic:update_ratio", "Update-to-weight ratio",
        "How far one optimiser step moves each weight matrix relative to its size. In steady training, around "
        "1e-3 per step is typical for AdamW-trained matrices; much larger means the step is too big, much smaller "
        "that it learns slowly. The first AdamW steps are larger (each entry moves by about the learning rate, "
        "whatever its gradient), a tensor that just left zero has a huge ratio, and Muon's orthogonalised "
        "updates have a size set by the learning rate alone.",
        "ratio = ‖ΔW‖ / ‖W‖",
    ),
    Explanation(
        "topic:schedule", "Learning-rate schedule",
        "Each optimiser group has a peak learning rate, and every step multiplies it by the schedule: a linear "
        "warmup over warmup_steps, then 1, then a linear warmdown over the last warmdown_ratio of max_steps down "
        "to final_lr_frac. A traced run continues its own schedule where it stopped, exactly as its next "
        "training step would: a run that finished its schedule steps at the small rate it ended with, so its "
        "updates are that much smaller.",
        "lr = peak lr x lr_multiplier(step, max_steps, warmup_steps, warmdown_ratio, final_lr_frac)",
    ),
    Explanation(
        "topic:zero_init", "Zero-initialised output projections and head",
        "With zero_init_out (the nanochat family's default) each block's two output projections (attn.c_proj, "
        "mlp.c_proj) and the LM head start as all-zero matrices: every block begins as the identity on the "
        "residual stream, and every logit is 0, so the first prediction is uniform (loss = ln vocab_size).",
        "out = h @ 0ᵀ = 0;   ∂loss/∂x = ∂loss/∂logits @ W_head = 0 while W_head = 0",
        look_for="In iteration 1 backward reaches only the head: the stream's gradient is the logits' gradient "
                 "times the head's weights, all zero, while the head's own gradient (the logits' gradient times "
                 "the stream) is not. The first step moves the head; from iteration 2 the stream, the embedding "
                 "and the c_proj layers get gradients, and the layers that feed a c_proj (c_q, c_k, c_v, c_fc) "
                 "one iteration later, once that c_proj is non-zero. A tensor that starts at zero has no "
                 "update-to-weight ratio (‖W‖ = 0): its first step is measured by ‖ΔW‖ alone.",
        experiment="--zero-init-out off (random output projections and head: gradients everywhere at once)",
    ),
]

# The common mistakes the learner's grader diagnoses, filed under the tensor they corrupt.
_MISTAKES: dict[str, list[tuple[str, str, str]]] = {
    "blocks.*.attn.norm": [
        ("eps_outside_sqrt", "epsilon added outside the square root",
         "RMSNorm is x / sqrt(mean(x²) + eps): eps goes inside the square root, so tiny vectors are not blown up."),
        ("norm_over_wrong_dim", "normalised over the time axis instead of the channels",
         "Normalise each vector on its own: mean over the last dimension (dim=-1, keepdim=True)."),
        ("layernorm_instead_of_rmsnorm", "LayerNorm (mean subtracted) where RMSNorm was asked",
         "RMSNorm does not subtract the mean: x / sqrt(mean(x²) + eps)."),
        ("rmsnorm_instead_of_layernorm", "RMSNorm (no centring) where LayerNorm was asked",
         "LayerNorm first subtracts the mean: (x - mean) / sqrt(var + eps) · weight + bias."),
        ("unbiased_variance", "variance divided by n - 1",
         "LayerNorm uses the biased variance: x.var(-1, unbiased=False), i.e. divide by n."),
    ],
    "topic:rope": [
        ("rope_wrong_frequencies", "frequencies base^(-i/D) instead of base^(-2i/D)",
         "Pair i turns at base^(-2i / head_dim): the exponent steps by 2 because each pair holds two dimensions."),
        ("rope_cos_sin_swapped", "cos and sin returned in the wrong order", "Return (cos, sin): cos first."),
    ],
    "blocks.*.attn.q_rot": [
        ("rope_adjacent_pairs", "RoPE pairs adjacent dimensions (0,1), (2,3)…",
         "This model pairs dimension i with i + D/2 (the two halves), not neighbours."),
        ("rope_opposite_rotation", "RoPE rotates the other way (by -θ)",
         "(x1, x2) → (x1 cos θ - x2 sin θ, x1 sin θ + x2 cos θ): check the signs."),
    ],
    "blocks.*.attn.v": [
        ("rope_on_values", "rotary embedding applied to the values too", "Rotate q and k only: v carries content, not position."),
    ],
    "blocks.*.attn.q_norm": [
        ("missing_qk_norm", "queries and keys not normalised (QK-norm missing)",
         "RMS-normalise q and k per head (over head_dim) after the rotation."),
    ],
    "blocks.*.attn.k_rep": [
        ("kv_heads_tiled", "key/value heads repeated in tile order",
         "Query head h reads key/value head h // (n_head / n_kv_head): use repeat_interleave on the head axis."),
    ],
    "blocks.*.attn.scores": [
        ("no_attention_scaling", "scores not divided by sqrt(head_dim)",
         "Divide q·kᵀ by sqrt(head_dim): without it the softmax is far too sharp."),
        ("scaled_by_d", "scores divided by head_dim instead of its square root",
         "The scale is 1 / sqrt(head_dim), not 1 / head_dim."),
    ],
    "blocks.*.attn.scores_masked": [
        ("mask_after_softmax", "causal mask applied after the softmax",
         "Mask the scores with -inf before the softmax; zeroing afterwards leaves rows that no longer sum to 1."),
        ("no_causal_mask", "no causal mask", "Set scores[i, j] = -inf for j > i before the softmax."),
    ],
    "blocks.*.attn.pattern": [
        ("softmax_wrong_dim", "softmax over the query axis instead of the key axis",
         "softmax(scores, dim=-1): each query's row (over keys) must sum to 1."),
    ],
    "blocks.*.attn.z": [
        ("heads_merged_without_transpose", "heads concatenated without transposing back",
         "z is (B, H, T, D): transpose(1, 2) to (B, T, H, D) before reshaping to (B, T, H·D)."),
    ],
    "blocks.*.mlp.act": [
        ("relu_not_relu2", "ReLU where ReLU² was asked", "Square the ReLU: relu(x).square()."),
        ("gelu_exact_not_tanh", "exact GELU where GPT-2's tanh approximation was asked", 'Use F.gelu(x, approximate="tanh").'),
        ("missing_activation", "no non-linearity between the two layers", "Apply the activation between c_fc and c_proj."),
        ("wrong_activation", "a different activation function than the family's",
         "nanochat uses ReLU², GPT-2 uses GELU (tanh approximation)."),
    ],
    "blocks.*.resid.mid": [
        ("residual_missing", "the residual connection is missing (x = f(x))",
         "Add each part's output to the stream: x = x + attn(norm(x))."),
        ("residual_twice", "the residual is added twice (x + x + f(x))", "Add the stream once: x = x + attn(norm(x))."),
        ("residual_adds_normed_input", "the normalised stream is added instead of the stream",
         "Keep the stream itself: x = x + attn(norm(x)), not norm(x) + attn(norm(x))."),
    ],
    "topic:prenorm": [
        ("post_norm", "norm after the residual add (post-norm) instead of before (pre-norm)",
         "Pre-norm: x = x + attn(norm(x)). Post-norm, norm(x + attn(x)), is the original Transformer's order."),
    ],
    "lm_head.logits_raw": [
        ("weights_tied", "the LM head is tied to the embedding in an untied family",
         ("nanochat keeps a separate lm_head = nn.Linear(C, V, bias=False) with a weight of its own: do not "
          "reuse wte.weight for the logits, and do not assign it (self.lm_head.weight = self.wte.weight).")),
        ("weights_not_tied", "a separate LM head where the family ties it to the embedding",
         ("GPT-2 ties the head to the embedding, one matrix: either lm_head = None and logits = x @ wte.weightᵀ, "
          "or nanoGPT's way, self.lm_head.weight = self.wte.weight (the same Parameter, not a copy).")),
    ],
    "lm_head.logits": [
        ("softcap_missing_divide", "softcap written c·tanh(logits)",
         "Divide first: c · tanh(logits / c), so small logits pass unchanged."),
        ("softcap_missing_multiply", "softcap written tanh(logits / c)",
         "Multiply back by c: c · tanh(logits / c); tanh alone squashes every logit into (-1, 1)."),
        ("softcap_missing", "no softcap on the logits", "Apply c · tanh(logits / c) with c = config.softcap."),
    ],
    "loss.per_token": [
        ("labels_not_shifted", "loss computed against the inputs, not the next tokens",
         "The loss compares logits at position t with targets[t], the token at t + 1 (the loader shifts them)."),
        ("last_position_only", "loss (or logits) for the last position only during training",
         "Training predicts every position: keep logits (B, T, V) and average the loss over all of them."),
        ("labels_shifted_twice", "targets shifted by one more (logits[:, :-1] scored against targets[:, 1:])",
         ("The targets are already the next tokens (targets[t] is the token after idx[t]): score logits[:, t] "
          "against targets[:, t], without slicing either of them.")),
    ],
    "loss": [
        ("ignored_targets_counted", "ignored targets (-1) counted in the mean",
         "Average over the targets that count: sum of losses / number of targets ≠ -1."),
    ],
}
# -- the learner's grader: hints that name no catalogued mistake ------------------------------------
# What `glassgpt learn check` says when a check fails for a reason other than a recognised mistake
# (a statistic of the initialisation, a property, an optimiser group...). Read with `grader_hint`.
_GRADER_HINTS: dict[str, str] = {
    "signature": "Keep the skeleton's signatures, e.g. MLP(config, layer_idx) and forward(x, cos, sin): the grader "
                 "calls them exactly so.",
    "init.config": "Keep self.config = config in GPT.__init__: training, sampling and the grader read it.",
    "init.rotary_buffers": "Register the rotary tables with persistent=False: they are computed, not learned, so "
                           "they are not saved (and the grader's weights do not include them).",
    "init.parameter_count": "Every weight should be one tensor, counted once: a module created twice, or a "
                            "parameter registered under two names, changes the count.",
    "init.zero": "attn.c_proj, mlp.c_proj and lm_head start at zero (zero_init_out): each block starts as the "
                 "identity on the residual stream, and the first prediction is uniform (loss = ln V).",
    "init.one": "Norm gains start at one and norm biases at zero.",
    "init.nanochat": "normal(0, s) with s = min(1, sqrt(fan_out / fan_in)) / sqrt(fan_in), where fan_in = "
                     "in_features = weight.shape[1]: each output then starts with about unit variance.",
    "init.nanochat.wte": "wte starts as normal(0, 1): each looked-up row then has unit RMS, as a normalised stream "
                         "would.",
    "init.gpt2": "normal(0, 0.02) for every Linear and Embedding weight; normal(0, 0.02 / sqrt(2 · n_layer)) for "
                 "the two c_proj weights of each block (two residual additions per block); biases zeros.",
    "gradient.only": "The output matches but a gradient does not: something in forward changes the backward pass "
                     "only, e.g. a .detach(), .data, torch.no_grad() or an in-place edit of a tensor autograd needs.",
    "gradient.missing": "A weight with no gradient is not used in forward, or is used through .detach(), .data or "
                        "torch.no_grad().",
    "property.unit_rms": "RMSNorm divides each vector by its own root-mean-square over the last dimension, "
                         "x / sqrt(mean(x²) + eps), so its output has RMS 1: the mean of the squares (not their "
                         "sum), under one square root.",
    "property.rope_relative": "Rotate every pair (x[..., i], x[..., i + D/2]) by its position's angle, both halves "
                              "with the same cos and sin: (x1 cos θ - x2 sin θ, x1 sin θ + x2 cos θ). Only a pure "
                              "rotation makes q·k depend on the distance i - j alone.",
    "property.gqa": "Query head h reads key/value head h // (n_head / n_kv_head): repeat k and v alike with "
                    "repeat_interleave(n_head // n_kv_head, dim=heads), after splitting them into n_kv_head heads.",
    "loss": "The loss is F.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-1): the mean over the "
            "targets that are not -1, with logits and targets at the same positions (the targets are already "
            "shifted).",
    "loss.all_ignored": "A batch may have no counted target (a chat batch whose positions are all masked): divide "
                        "the summed loss by the count clamped to at least 1, so the loss is 0, not 0 / 0 = NaN.",
    "optimizer.nanochat": "Muon(lr=matrix_lr, momentum=0.95) for the 2-D weights under blocks.*; "
                          "AdamW(betas=(0.8, 0.95), eps=1e-10, weight_decay=0) for wte at embedding_lr · s and "
                          "lm_head at unembedding_lr · s, with s = (n_embd / 768) ** -0.5.",
    "optimizer.gpt2": "One AdamW(lr=lr, betas=(0.9, 0.95), eps=1e-10), with weight_decay for the 2-D weights and "
                      "0 for the 1-D ones (biases, norm gains).",
    "training.curve": "One step matched, but the curves part: does setup_optimizers use the learning rates it is "
                      "given (the training check passes its own), and does forward avoid randomness of its own?",
    "generation.greedy": "Each new token is the argmax (temperature 0) of the logits at the last position of the "
                         "context; append it and repeat.",
    "generation.crop": "Once the text is longer than config.sequence_len, feed the model only its last "
                       "sequence_len tokens: idx[:, -config.sequence_len:].",
    # a failure under the grader's varied setting only: the learner's code does not follow a config field
    "config.n_layer": "Build config.n_layer blocks: nn.ModuleList(Block(config, i) for i in range(config.n_layer)).",
    "config.n_embd": "Size every layer from config.n_embd (C), never from a number: the width changes with the model.",
    "config.n_head": "Split into config.n_head query heads of config.head_dim = n_embd // n_head each: read both from "
                     "the config, in view(B, T, n_head, head_dim) and in the scale 1/sqrt(head_dim).",
    "config.n_kv_head": "c_k and c_v have config.n_kv_head · head_dim outputs, and each key/value head serves "
                        "n_head // n_kv_head query heads: compute that group from the config, not a constant.",
    "config.head_dim": "head_dim = n_embd // n_head changes with both: use config.head_dim (or n_embd // n_head) "
                       "wherever the size of one head is meant (the view into heads, the scale 1/sqrt(head_dim), "
                       "the rotary frequencies base^(-2i/head_dim)), never a number.",
    "config.vocab_size": "The embedding and the head have config.vocab_size rows.",
    "config.sequence_len": "Size the rotary tables and learned positions for config.sequence_len positions, slice them "
                           "to the T of the input, and crop generation to the last config.sequence_len tokens.",
    "config.mlp_ratio": "The MLP's hidden width is config.mlp_hidden = config.mlp_ratio · n_embd (4 · n_embd by "
                        "default): read it from the config rather than writing 4.",
    "config.rope_base": "rotary_tables(seq_len, head_dim, base) turns pair i by base^(-2i/head_dim): use its base "
                        "argument, and call it with config.rope_base when building the tables in GPT.__init__.",
    "config.softcap": "The softcap is c · tanh(logits / c) with c = config.softcap, not a number written in the code.",
    "config.dropout": "Apply dropout with p = config.dropout, only in training mode: F.dropout(x, p, self.training) "
                      "or an nn.Dropout(config.dropout) module (model.eval() turns it off).",
    "config.several": "Your code follows the default config but not the varied one: look for numbers written where a "
                      "config field (n_head, n_kv_head, n_embd, sequence_len, mlp_ratio, rope_base, softcap, dropout) "
                      "should be read.",
    "error.sizes": "The numbers in this error are sizes of the grading model, named after the config fields they "
                   "equal: find where a tensor of one size meets one of another (for example keys and values with "
                   "n_kv_head heads meeting queries with n_head heads need repeat_interleave(n_head // n_kv_head)).",
    # a difference said in words (a constant factor, an offset, a shift, another order...)
    "words": "The difference has a simple shape (said after the numbers): a constant factor points at a scale or a "
             "normalisation, an offset at a bias or an added term, a shift at an index off by one, another order at "
             "a reshape, transpose or indexing, a difference at some positions only at masking or slicing.",
    "words.norm_eps": "eps = NORM_EPS (1e-5), inside the square root: x / sqrt(mean(x²) + eps).",
    "words.rope_base": "rotary_tables(seq_len, head_dim, base) must use its base argument: the frequencies are "
                       "base^(-2i/head_dim), and GPT.__init__ passes config.rope_base.",
    "words.attention_scale": "The scores are q·kᵀ / sqrt(head_dim), with head_dim = n_embd // n_head the size of one "
                             "head (not n_embd, not head_dim itself).",
    "words.softcap": "The softcap is c · tanh(logits / c) with c = config.softcap (None: no softcap at all).",
    # NaN or inf where the reference is finite: the likely cause, from where they are
    "nonfinite.masked_diagonal": "The first position(s) have no key left to attend to: a query may see itself, so mask "
                                 "only the later keys (j > i: torch.ones(T, T).tril() keeps j ≤ i, triu(diagonal=1) "
                                 "marks j > i). Softmax over a row that is all -inf is 0/0 = NaN.",
    "nonfinite.masked_inverted": "The last position has no key left to attend to, yet with a causal mask it sees "
                                 "every key: the mask looks inverted (masked_fill(mask, -inf) where the mask marks "
                                 "the keys to keep; use ~mask). Softmax over a row of -inf is NaN.",
    "nonfinite.masked_row": "Some queries have every key masked: softmax over a row that is all -inf is 0/0 = NaN. "
                            "Each query must keep at least itself (mask only j > i).",
    "nonfinite.overflow": "Values overflowed float32 (beyond 3.4e38): typically exp() of a large number. Subtract the "
                          "row maximum before exp (torch.softmax and F.cross_entropy do), or use the library function.",
    "nonfinite.log_zero": "A log of zero: log(softmax(…)) underflows to log(0) = -inf for unlikely tokens. Use "
                          "F.cross_entropy on the logits (or log_softmax), which never takes the log of 0.",
    "nonfinite.zero_division": "A division of zero by zero: a vector that is all zeros has mean(x²) = 0, so "
                               "x / sqrt(mean(x²)) is 0/0 = NaN. eps inside the square root keeps the denominator "
                               "positive.",
    "nonfinite.loss": "The loss is NaN: 0/0 (a mean over no counted targets), or inf - inf in a hand-written "
                      "log-sum-exp. Use F.cross_entropy(logits, targets, ignore_index=-1) and divide by the count "
                      "clamped to at least 1.",
    "nonfinite.other": "NaN appears where the reference stays finite: look for 0/0, inf - inf, sqrt or log of a "
                       "negative number, or a softmax over a row that is all -inf.",
    "nonfinite.training": "The loss became NaN or inf during training: one step's forward or backward produced a "
                          "non-finite value (0/0, an overflow, a log of zero); glassgpt learn check --component "
                          "forward names where.",
    # dropout (checked under the varied setting, where config.dropout > 0)
    "dropout.eval": "Dropout must be off in eval mode: F.dropout(x, p, self.training) (F.dropout's own default is "
                    "training=True, which drops even in eval mode), or an nn.Dropout module, which follows "
                    "model.eval().",
    "dropout.ignored": "Apply dropout with p = config.dropout in training mode: F.dropout(x, config.dropout, "
                       "self.training), or nn.Dropout(config.dropout).",
    "dropout.rate": "Use p = config.dropout, not a number of your own, and apply dropout once at each place.",
    "dropout.scale": "Dropout divides the values it keeps by 1 - p, so that the expected output equals the eval-mode "
                     "output: F.dropout and nn.Dropout do this; a mask of your own must too.",
    "dropout.sites": "The reference applies dropout (p = config.dropout, training mode only) at four places: the "
                     "embedding before the first block (before embed_norm), the attention weights after the "
                     "softmax, the attention's output after c_proj, and the MLP's output after c_proj.",
    "inplace.input": "Leave a module's input as it is: x = x - mean, not x -= mean. In the model the same tensor is "
                     "read again by the caller (the residual stream is added to after the norm), so changing it in "
                     "place changes the model's output or breaks backward.",
    # an error raised during backward
    "gradient.inplace": "An in-place operation (x += …, x.add_(…), x[…] = …, inplace=True) changed a tensor that "
                        "autograd saved to compute gradients. Write the out-of-place form (x = x + …) at the line "
                        "named.",
}


def grader_hint(key: str) -> str:
    """A hint of the learner's grader that is not a catalogued mistake (see `_GRADER_HINTS`)."""
    return _GRADER_HINTS[key]


ENTRIES = [dataclasses.replace(e, mistakes=tuple(KnownMistake(*m) for m in _MISTAKES.get(e.key, ()))) for e in ENTRIES]
REGISTRY: dict[str, Explanation] = {entry.key: entry for entry in ENTRIES}
KNOWN_MISTAKES: dict[str, tuple[str, KnownMistake]] = {
    mistake.id: (entry.key, mistake) for entry in ENTRIES for mistake in entry.mistakes}
TRACE_POINTS: list[str] = [e.key for e in ENTRIES if not e.key.startswith("topic:")]

_BLOCK_INDEX = re.compile(r"^blocks\.\d+\.")


def pattern_of(name: str) -> str:
    """'blocks.3.attn.q' → 'blocks.*.attn.q'; 'grad:loss' → 'loss'."""
    name = name.removeprefix("grad:")
    return _BLOCK_INDEX.sub("blocks.*.", name)


def explain(name: str) -> Explanation:
    """The explanation of a trace point (any block index, with or without grad:) or a topic."""
    try:
        return REGISTRY[pattern_of(name)]
    except KeyError:
        raise KeyError(f"no explanation for {name!r}") from None


def names_for(config: GPTConfig, blocks: list[int] | None = None) -> list[str]:
    """Concrete trace-point names the model emits for `config`, in forward order (when a tracer
    wants the attention internals, which switches to the explicit path)."""
    blocks = list(range(config.n_layer)) if blocks is None else blocks
    emitted = [e.key for e in ENTRIES if not e.key.startswith("topic:") and e.when(config)]
    per_block = [key for key in emitted if key.startswith("blocks.*.")]
    if config.norm_placement == "post":  # post-norm normalises after each part: norm(x + f(x))
        for part, last in (("attn", "blocks.*.attn.out"), ("mlp", "blocks.*.mlp.out")):
            per_block.remove(f"blocks.*.{part}.norm")
            per_block.insert(per_block.index(last) + 1, f"blocks.*.{part}.norm")
    before = [key for key in emitted if key.startswith("embed.")]
    after = [key for key in emitted if not key.startswith(("embed.", "blocks."))]
    return before + [key.replace("*", str(i), 1) for i in blocks for key in per_block] + after


# The switches that decide whether a trace point exists: (field, the value that brings it, what
# a model without it lacks).
_SWITCHES = (("position", "rope", "no RoPE"), ("position", "learned", "no learned position table"),
             ("qk_norm", True, "no QK-norm"), ("embed_norm", True, "no embedding norm"),
             ("causal", True, "no causal mask"))


def why_not_emitted(key: str, config: GPTConfig) -> str | None:
    """Why `config` does not emit the registry entry `key`, naming the switch that would bring
    it ('... exists only with position = rope; this gpt2 model has position = learned: no
    RoPE'), or None when it does emit it."""
    entry = REGISTRY[key]
    if entry.when(config):
        return None
    for field, value, lacking in _SWITCHES:
        if entry.when(dataclasses.replace(config, **{field: value})):
            return (f"{key} exists only with {field} = {_shown(value)}; this {config.family} model has "
                    f"{field} = {_shown(getattr(config, field))}: {lacking}")
    return f"{key} is not emitted by this model"


def _shown(value) -> str:
    return {True: "on", False: "off"}.get(value, str(value)) if isinstance(value, bool) else str(value)


def check_patterns(patterns: list[str], config: GPTConfig) -> None:
    """Raise UsageError when a pattern matches no trace point of `config`: say why when it names
    a point this configuration does not have, otherwise name close matches. A `grad:` prefix
    selects the same points (for their gradients)."""
    from glassgpt.errors import UsageError

    names = names_for(config)
    for pattern in patterns:
        prefix = "grad:" if pattern.startswith("grad:") else ""
        bare = pattern.removeprefix(prefix)
        if any(fnmatch.fnmatchcase(name, bare) for name in names):
            continue
        absent = [key for key in TRACE_POINTS if not REGISTRY[key].when(config) and any(
            fnmatch.fnmatchcase(name, bare) for name in (key, *(key.replace("*", str(i), 1) for i in range(config.n_layer))))]
        if absent:
            raise UsageError(f"trace point pattern {pattern!r} matches nothing this model emits: "
                             + "; ".join(why_not_emitted(key, config) for key in absent))
        candidates = sorted({pattern_of(name) for name in names} | set(names))  # this model's names only
        close = [prefix + c for c in difflib.get_close_matches(bare, candidates, n=4, cutoff=0.5)]
        hint = f"; close matches: {', '.join(close)}" if close else "; see glassgpt trace --list"
        raise UsageError(f"trace point pattern {pattern!r} matches nothing{hint}")


def _break_it_markdown(text: str) -> str:
    """'--causal off (what breaks): glassgpt experiment run X' → the flag as a train command, what
    breaks, and the experiment as a command."""
    if not text:
        return ""
    text, _, experiment = text.partition(": glassgpt experiment run ")
    flags, _, breaks = text.partition(" (")
    line = f"`glassgpt train ... {flags}`" + (f" ({breaks}" if breaks else "")
    return line + (f"; see it: `glassgpt experiment run {experiment}`" if experiment else "")


def reference_markdown() -> str:
    """docs/reference/trace-points.md, generated from this registry (a test keeps them equal):
    `python -m glassgpt.see.registry > docs/reference/trace-points.md`."""
    lines = ["# Trace points", "",
             "<!-- generated by `python -m glassgpt.see.registry`; edit src/glassgpt/see/registry.py instead -->", "",
             "Every operation of the reference model passes through a named trace point. `*` is the block",
             "index (`blocks.3.attn.q`); gradients use the same names with a `grad:` prefix. Select them in",
             "`glassgpt trace --only PATTERN` with shell-style patterns (`blocks.*.attn.*`).", "",
             "| trace point | what it is | shape |", "|---|---|---|"]
    lines += [f"| `{e.key}` | {e.title}: {e.meaning} | {e.shape} |" for e in ENTRIES if not e.key.startswith("topic:")]
    for entry in ENTRIES:
        lines += ["", f"## `{entry.key}`" if not entry.key.startswith("topic:") else f"## {entry.title}", ""]
        if not entry.key.startswith("topic:"):
            lines += [f"**{entry.title}.** {entry.meaning}", ""]
        else:
            lines += [entry.meaning, ""]
        for label, text in (("Formula", f"`{entry.formula}`" if entry.formula else ""), ("Shape", entry.shape),
                            ("Look for", entry.look_for), ("Common bug", entry.common_bug),
                            ("Break it", _break_it_markdown(entry.experiment))):
            if text:
                lines.append(f"- {label}: {text}")
        if entry.mistakes:
            lines.append("- Mistakes `glassgpt learn check` recognises here: " + "; ".join(
                f"`{m.id}` ({m.description})" for m in entry.mistakes))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
