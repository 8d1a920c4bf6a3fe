"""Recurrent caption decoder (LSTM or GRU), optionally with soft attention over image regions.

Follows Show and Tell (Vinyals et al., CVPR 2015: image features initialise the recurrent state) and
Show, Attend and Tell (Xu et al., ICML 2015: additive soft attention over the spatial grid, a gating
scalar beta on the context, and the doubly stochastic regulariser on the attention weights).

Shapes: B batch, T caption steps, V vocab, D embedding, E feature, H hidden, L layers, P positions, A attention,
F frames.

Video models (cfg.temporal) read per-frame features (B,F,E) through the same interface: "mean" conditions on
their average, "attention" attends over the frames instead of image regions (SA-LSTM, Yao et al., ICCV 2015),
and "lstm"/"gru" first run a (bidirectional) recurrent encoder over the frames, whose final states initialise
the decoder and whose per-frame states are its attention memory (S2VT, Venugopalan et al., ICCV 2015).

Two entry points over the same weights:
  forward(features (B,P,E), tokens (B,T)) -> logits (B,T,V)   teacher forcing, for training
  init_state(features) -> state; step(tokens (B,), state) -> (log_probs (B,V), state)   for decoding
The decoding state is a dict of tensors that all have the batch on dim 0, so a beam search reorders
any decoder's state with one `index_select(0, ...)` per entry without knowing what is inside.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .copying import CopyHead
from .vocab import Vocabulary

State = dict[str, torch.Tensor]


def _tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh for decoding's LSTM step. On the CPU by NumPy: torch's CPU tanh ran 4.5x slower than NumPy's SIMD
    one here (640x512 floats: 590 vs 130 us, 2 threads vs 1; torch's sigmoid takes 90), two calls per step
    on every beam row. The two agree to 1 ulp (6e-8)."""
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return torch.tanh(x)
    return torch.from_numpy(np.tanh(x.numpy()))


class DecoderOutput(NamedTuple):
    # (B,T,V); for copy models the mixture's log-probabilities (already normalised). Packed, (N,V): the
    # logits of the N non-PAD targets only, when the caller gave targets and no per-step output is needed
    # (`targets` is then (N,) too). caption_loss takes either layout.
    logits: torch.Tensor
    alphas: torch.Tensor | None  # (B,T,P) attention weights per step, None without attention
    targets: torch.Tensor | None = None  # (B,T) or packed (N,): the targets the loss must use, when given
    person_logit: torch.Tensor | None = None  # (B,) the person detector's logit (cfg.person_gate), else None

    @property
    def packed(self) -> bool:
        return self.logits.dim() == 2


class SoftAttention(nn.Module):
    """Additive (Bahdanau) attention: e = w^T tanh(W_m m + W_h h), alpha = softmax_P(e)."""

    def __init__(self, feature_dim: int, hidden_dim: int, attention_dim: int):
        super().__init__()
        self.memory_proj = nn.Linear(feature_dim, attention_dim)
        self.hidden_proj = nn.Linear(hidden_dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1)

    def forward(self, memory: torch.Tensor, memory_proj: torch.Tensor, h: torch.Tensor):
        # memory (B,P,E), memory_proj (B,P,A) precomputed once per image, h (B,H)
        e = self.score(torch.tanh(memory_proj + self.hidden_proj(h).unsqueeze(1))).squeeze(2)  # (B,P)
        alpha = F.softmax(e, dim=1)  # (B,P)
        context = torch.bmm(alpha.unsqueeze(1), memory).squeeze(1)  # (B,E)
        return context, alpha


class TemporalEncoder(nn.Module):
    """A recurrent encoder over frame features: (B,F,E) -> per-frame states (B,F,Ht) and a clip summary (B,Ht),
    Ht = H x directions. The summary joins the forward RNN's last state with the backward RNN's first."""

    def __init__(self, feature_dim: int, hidden_dim: int, rnn: str, bidirectional: bool):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.bidirectional = bidirectional
        self.rnn = (nn.LSTM if rnn == "lstm" else nn.GRU)(feature_dim, hidden_dim, batch_first=True,
                                                          bidirectional=bidirectional)
        self.out_dim = hidden_dim * (2 if bidirectional else 1)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states, _ = self.rnn(frames)  # (B,F,Ht)
        if not self.bidirectional:
            return states, states[:, -1]
        H = self.hidden_dim
        return states, torch.cat([states[:, -1, :H], states[:, 0, H:]], dim=1)  # (B,F,2H), (B,2H)


class CaptionDecoder(nn.Module):
    """`copy` (copying.CopyHead, for cfg.copy_nouns > 0) mixes copying the image's candidate nouns into the
    output; the generated vocabulary is then its first `copy.gen_size` words."""

    def __init__(self, vocab_size: int, feature_dim: int, cfg: ModelConfig, copy: CopyHead | None = None):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.copy = copy
        self.is_lstm = cfg.rnn == "lstm"
        self.temporal = (TemporalEncoder(feature_dim, cfg.hidden_dim, cfg.temporal, cfg.temporal_bidirectional)
                         if cfg.temporal in ("lstm", "gru") else None)
        attend = cfg.attention or cfg.temporal in ("attention", "lstm", "gru")
        L, H, D = cfg.num_layers, cfg.hidden_dim, cfg.embed_dim
        E = self.temporal.out_dim if self.temporal is not None else feature_dim
        self.embed = nn.Embedding(vocab_size, D, padding_idx=0)
        self.init_h = nn.Linear(E, L * H)
        self.init_c = nn.Linear(E, L * H) if self.is_lstm else None
        rnn_cls = nn.LSTM if self.is_lstm else nn.GRU
        self.rnn = rnn_cls(D + (E if attend else 0) + (D if cfg.concepts else 0), H, num_layers=L, batch_first=True,
                           dropout=cfg.dropout if L > 1 else 0.0)
        self.attention = SoftAttention(E, H, cfg.attention_dim) if attend else None
        self.f_beta = nn.Linear(H, E) if attend else None  # gating scalar per context dim
        self.dropout = nn.Dropout(cfg.dropout)
        # Weight tying (Press & Wolf, 2017): the output layer reuses the embedding matrix, via H->D if needed.
        self.out_proj = nn.Linear(H, D) if cfg.tie_weights and H != D else None
        self.fc = nn.Linear(D if cfg.tie_weights else H, copy.gen_size if copy is not None else vocab_size)
        # Is there a person in the picture? A linear detector on the mean feature, trained beside the caption on
        # labels read from the captions, with the classes balanced (training.PersonTargets); decoding lets a
        # caption say "man", "people", ... only when it fires (DecodeConfig.person_gate). Fang et al. (CVPR
        # 2015, "From Captions to Visual Concepts and Back") train word detectors from captions the same way.
        self.person_head = nn.Linear(feature_dim, 1) if cfg.person_gate else None
        if cfg.tie_weights:
            self.fc.weight = self.embed.weight
        self._word_gates: tuple[tuple, torch.Tensor] | None = None  # decoding's table, see _input_gates

    # --- state -------------------------------------------------------------------------------------------
    def init_state(self, features: torch.Tensor) -> State:
        """features (B,P,E) (image regions, or frames F in place of P) -> state with h (B,L,H) [, c (B,L,H)]
        [, memory (B,P,E), memory_proj (B,P,A)]."""
        B = features.size(0)
        L, H = self.cfg.num_layers, self.cfg.hidden_dim
        raw = features
        if self.temporal is not None:
            features, summary = self.temporal(features)  # (B,F,Ht), (B,Ht)
        else:
            summary = features.mean(dim=1)  # (B,E)
        state = {"h": torch.tanh(self.init_h(summary)).view(B, L, H)}
        if self.is_lstm:
            state["c"] = torch.tanh(self.init_c(summary)).view(B, L, H)
        if self.attention is not None:
            state["memory"] = features
            state["memory_proj"] = self.attention.memory_proj(features)  # (B,P,A)
        if self.copy is not None:
            state = self.copy.init_state(raw, summary, state)
        if self.person_head is not None:
            state["person_logit"] = self.person_head(raw.mean(dim=1)).squeeze(1)  # (B,)
        return state

    def _rnn_hidden(self, state: State):
        h = state["h"].transpose(0, 1).contiguous()  # (L,B,H): nn.LSTM/GRU's layout
        return (h, state["c"].transpose(0, 1).contiguous()) if self.is_lstm else h

    def _logits(self, out: torch.Tensor) -> torch.Tensor:
        out = self.dropout(out)
        if self.out_proj is not None:
            out = self.out_proj(out)
        return self.fc(out)

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (...) -> (...,D); copy-only words through the copy head's projection."""
        x = self.embed(tokens)
        return self.copy.embed(tokens, x) if self.copy is not None else x

    def _output(self, out: torch.Tensor, x: torch.Tensor, state: State, hide: torch.Tensor | None = None):
        """Top RNN output (B,[T,]H) and input embedding -> logits, or the copy mixture's log-probs."""
        logits = self._logits(out)
        return logits if self.copy is None else self.copy.mix(logits, out, x, state, hide)

    # --- decoding's LSTM step -------------------------------------------------------------------------------
    # Without attention a 1-layer LSTM's input is the word's embedding (and the image's concept vector, the same
    # at every step), so its input-to-gates product need not be recomputed per step: a table of it per word
    # (V,4H), made once per set of weights, and the concept's share once per image, leave one matmul per step
    # (h W_hh^T). The same equations as nn.LSTM (gates i, f, g, o); within float rounding of it (tested).
    use_gate_table = True  # False: decoding steps nn.LSTM too (scripts/bench_decode.py compares the two)

    def _fast_step(self) -> bool:
        return (self.use_gate_table and self.is_lstm and self.attention is None and self.cfg.num_layers == 1
                and not self.training and not torch.is_grad_enabled())

    def _input_gates(self) -> torch.Tensor:
        """(V,4H): embed(w) W_ih[:, :D]^T + b_ih + b_hh for every word w (copy-only words by their copy
        embedding), remade when any weight it depends on changes (a new tensor or an in-place update)."""
        weights = [self.embed.weight, self.rnn.weight_ih_l0, self.rnn.bias_ih_l0, self.rnn.bias_hh_l0]
        if self.copy is not None:
            weights += list(self.copy.copy_embed.parameters()) + [self.copy.noun_visual]
        key = tuple((id(w), w._version, w.device, w.dtype) for w in weights)
        if self._word_gates is None or self._word_gates[0] != key:
            D = self.cfg.embed_dim
            words = self._embed(torch.arange(self.vocab_size, device=self.embed.weight.device))  # (V,D)
            table = torch.addmm(self.rnn.bias_ih_l0 + self.rnn.bias_hh_l0, words, self.rnn.weight_ih_l0[:, :D].t())
            self._word_gates = (key, table)
        return self._word_gates[1]

    def _lstm_step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """tokens (B,) -> top-layer output (B,H), new state (with "concept_gates" (B,4H) kept for the next steps)."""
        new: State = dict(state)
        gates = self._input_gates().index_select(0, tokens)  # (B,4H), a new tensor: updated in place below
        if "concept" in state:
            if "concept_gates" not in state:
                new["concept_gates"] = state["concept"] @ self.rnn.weight_ih_l0[:, self.cfg.embed_dim:].t()
            gates += new["concept_gates"]
        gates.addmm_(state["h"][:, 0], self.rnn.weight_hh_l0.t())
        i, f, g, o = gates.chunk(4, dim=1)  # (B,H) each
        c = torch.sigmoid(f) * state["c"][:, 0] + torch.sigmoid(i) * _tanh(g)
        h = torch.sigmoid(o) * _tanh(c)
        new["h"], new["c"] = h.unsqueeze(1), c.unsqueeze(1)  # (B,1,H)
        return h, new

    def _advance(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, torch.Tensor | None, State]:
        """One recurrent step: tokens (B,) -> top-layer output (B,H), the input embedding (B,D) (None from
        decoding's fast step where no copy head reads it), new state."""
        if self._fast_step():  # the embedding is in the gate table; only the copy head reads it
            out, new = self._lstm_step(tokens, state)
            return out, self._embed(tokens) if self.copy is not None else None, new
        x = emb = self._embed(tokens)  # (B,D)
        new: State = dict(state)
        if self.attention is not None:
            h_top = state["h"][:, -1]  # (B,H)
            context, alpha = self.attention(state["memory"], state["memory_proj"], h_top)  # (B,E), (B,P)
            context = torch.sigmoid(self.f_beta(h_top)) * context  # gated context (B,E)
            x = torch.cat([x, context], dim=1)  # (B,D+E)
            new["alpha"] = alpha
        if "concept" in state:
            x = torch.cat([x, state["concept"]], dim=1)  # (B,[D+E]+D): what the CNN sees, every step
        out, hidden = self.rnn(x.unsqueeze(1), self._rnn_hidden(state))  # out (B,1,H)
        if self.is_lstm:
            new["h"], new["c"] = hidden[0].transpose(0, 1), hidden[1].transpose(0, 1)  # (B,L,H)
        else:
            new["h"] = hidden.transpose(0, 1)
        return out.squeeze(1), emb, new

    # --- inference -----------------------------------------------------------------------------------------
    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """tokens (B,) previous words -> log-probabilities of the next word (B,V), new state.
        With attention, the new state's "alpha" (B,P) holds this step's attention weights."""
        out, x, state = self._advance(tokens, state)
        return F.log_softmax(self._output(out, x, state), dim=-1), state

    # --- training ------------------------------------------------------------------------------------------
    def forward(self, features: torch.Tensor, tokens: torch.Tensor, sampling_prob: float = 0.0,
                targets: torch.Tensor | None = None, hide_prob: float = 0.0) -> DecoderOutput:
        """Teacher forcing: tokens (B,T) are the inputs (BOS w1 ... w_{T-1}); returns logits (B,T,V) for the
        next word at each step (packed (N,V), see DecoderOutput, when `targets` are given to the fast path).
        With `sampling_prob` > 0 (scheduled sampling, Bengio et al. 2015) each input after the first is, with
        that probability, replaced by the model's own greedy prediction.
        Copy models take the `targets` (B,T): copy-only words that are not candidates become UNK (returned as
        .targets), and with `hide_prob` a candidate's generation path is closed (copying.CopyHead.hide_mask)."""
        state = self.init_state(features)
        hide = None
        if self.copy is not None and targets is not None:
            targets = self.copy.trainable_targets(targets, state, unk_id=Vocabulary.unk_id)
            hide = self.copy.hide_mask(targets, state, hide_prob) if hide_prob > 0 else None
        if self.attention is None and sampling_prob == 0.0:
            # Fast path: the whole sequence in one fused RNN call; equal to stepping (tested).
            x = self._embed(tokens)  # (B,T,D)
            inputs = x
            if "concept" in state:
                inputs = torch.cat([x, state["concept"].unsqueeze(1).expand(-1, x.size(1), -1)], dim=2)  # (B,T,2D)
            out, _ = self.rnn(inputs, self._rnn_hidden(state))  # (B,T,H)
            if targets is not None and self.copy is None:
                # With the targets known, the output layer (the largest matmul) runs on real words only, not
                # on PAD: packed logits (N,V) for the N non-PAD targets, returned with those targets (N,).
                real = targets != Vocabulary.pad_id  # (B,T)
                return DecoderOutput(self._logits(out[real]), None, targets[real], state.get("person_logit"))
            return DecoderOutput(self._output(out, x, state, hide), None, targets, state.get("person_logit"))
        logits, alphas = [], []
        prev = tokens[:, 0]
        for t in range(tokens.size(1)):
            if t > 0:
                prev = tokens[:, t]
                if sampling_prob > 0.0:
                    use_model = torch.rand(prev.shape, device=prev.device) < sampling_prob  # (B,)
                    prev = torch.where(use_model, logits[-1].argmax(-1).detach(), prev)
            out, x, state = self._advance(prev, state)
            logits.append(self._output(out, x, state, hide[:, t] if hide is not None else None))  # (B,V)
            if "alpha" in state:
                alphas.append(state["alpha"])
        return DecoderOutput(torch.stack(logits, 1), torch.stack(alphas, 1) if alphas else None, targets,
                             state.get("person_logit"))
