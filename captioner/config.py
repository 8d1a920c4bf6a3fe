"""Settings for the model, training and decoding, as plain dataclasses.

Every config round-trips through a dict of primitives (that is how it lives inside a checkpoint),
and `from_dict` rejects unknown keys so a typo in a saved or hand-written config is an error,
not a silently ignored setting.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

from .errors import ConfigError

C = TypeVar("C")

RNN_TYPES = ("lstm", "gru")
DATASET_FORMATS = ("coco", "karpathy", "flickr8k", "jsonl", "csv", "msrvtt", "msvd")
# How a video model combines its frames' features: "none" = an image model (a video given to it is captioned
# from the mean of its frames' features); "mean" pools them (a strong, fast baseline); "attention" lets the
# decoder attend over frames at every step (SA-LSTM, Yao et al. 2015); "lstm"/"gru" run a recurrent encoder
# over the frames whose states initialise the decoder and are its attention memory (S2VT, Venugopalan et al.
# 2015).
TEMPORAL = ("none", "mean", "attention", "lstm", "gru")
SCHEDULERS = ("plateau", "cosine", "none")
# What training minimises: "xent" = cross-entropy with teacher forcing; "cider" = self-critical sequence
# training (Rennie et al. 2017): the expected CIDEr-D of the model's own sampled captions (see scst.py).
OBJECTIVES = ("xent", "cider")


def _from_dict(cls: type[C], data: dict[str, Any]) -> C:
    allowed = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown {cls.__name__} key(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    obj = cls(**data)
    obj.validate()  # type: ignore[attr-defined]
    return obj


@dataclass
class ModelConfig:
    """Encoder + decoder architecture. Everything needed to rebuild the modules before load_state_dict."""

    backbone: str = "efficientnet_lite0"
    # "none" (random init), "pretrained" (the backbone's offline or torchvision weights), or a file path.
    encoder_weights: str = "pretrained"
    fine_tune_encoder: int = 0  # number of last backbone stages to train; 0 = frozen
    rnn: str = "lstm"
    num_layers: int = 1
    embed_dim: int = 256
    hidden_dim: int = 512
    dropout: float = 0.3
    attention: bool = False  # Show, Attend and Tell soft attention over the spatial grid
    attention_dim: int = 256
    tie_weights: bool = False
    temporal: str = "none"  # see TEMPORAL
    temporal_bidirectional: bool = False  # lstm/gru temporal encoder reads the frames both ways
    num_frames: int = 16  # frames sampled uniformly from each video (training and captioning alike)
    copy_nouns: int = 0  # copy decoder (copying.py): candidate nouns per image from the CNN's classifier; 0 = off
    concepts: bool = False  # copy models: the candidate nouns are also an input of every step (LSTM-A)
    # copy models: a noun's probability sums only the classifier's this many most probable classes (the rest
    # hold its floor, no evidence: nouns.strongest_classes); 0 = all (the models trained before it was added)
    noun_classes: int = 0
    person_gate: bool = False  # a person detector trained beside the caption (decoder.py); see DecodeConfig

    @property
    def is_video(self) -> bool:
        return self.temporal != "none"

    def validate(self) -> None:
        if self.rnn not in RNN_TYPES:
            raise ConfigError(f"unknown rnn {self.rnn!r}; choose one of: {', '.join(RNN_TYPES)}")
        if self.temporal not in TEMPORAL:
            raise ConfigError(f"unknown temporal aggregation {self.temporal!r}; choose one of: {', '.join(TEMPORAL)}")
        if self.is_video and self.attention:
            raise ConfigError("--attention (over an image's spatial grid) is for image models; a video model "
                              "attends over its frames with --temporal attention, lstm or gru")
        if self.temporal_bidirectional and self.temporal not in ("lstm", "gru"):
            raise ConfigError("temporal_bidirectional needs --temporal lstm or gru")
        if self.copy_nouns < 0:
            raise ConfigError(f"copy_nouns must be >= 0, got {self.copy_nouns}")
        if self.noun_classes < 0:
            raise ConfigError(f"noun_classes must be >= 0, got {self.noun_classes}")
        if self.noun_classes and not self.copy_nouns:
            raise ConfigError("--noun-classes sets how the copy decoder's candidate nouns are scored: it needs "
                              "--copy-nouns K")
        if self.concepts and not self.copy_nouns:
            raise ConfigError("--concepts feeds the copy decoder's candidate nouns to every step: it needs "
                              "--copy-nouns K")
        if self.copy_nouns and self.tie_weights:
            raise ConfigError("--copy-nouns and --tie-weights do not combine (the output layer covers only "
                              "generated words)")
        for name in ("num_layers", "embed_dim", "hidden_dim", "attention_dim", "num_frames"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.fine_tune_encoder < 0:
            raise ConfigError(f"fine_tune_encoder must be >= 0, got {self.fine_tune_encoder}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        return _from_dict(cls, data)


@dataclass
class TrainConfig:
    """Optimisation settings. Stored in the checkpoint so a run can be resumed and reproduced."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3  # decoder learning rate (Adam)
    encoder_lr: float = 1e-4  # used only when fine_tune_encoder > 0
    weight_decay: float = 0.0
    grad_clip: float = 5.0  # max global gradient norm; 0 = no clipping
    scheduler: str = "plateau"
    label_smoothing: float = 0.0
    scheduled_sampling: float = 0.0  # max prob. of feeding the model's own previous token
    alpha_c: float = 1.0  # doubly stochastic attention regularisation weight
    patience: int = 5  # early stopping: epochs without val BLEU-4 improvement; 0 = off
    min_freq: int = 5
    max_vocab: int = 10000
    max_len: int = 20  # captions are truncated to this many tokens for training and decoding
    seed: int = 0
    num_workers: int = 0
    cache_features: bool = True
    # copy models: how often a caption noun the CNN also sees must be copied rather than generated, which
    # teaches the gate to copy words it has never generated (novel-object simulation; 1.0 measured best)
    copy_hide: float = 1.0
    # re-weight training draws so that photos showing a person make up this share (0 = draw as the data is;
    # datasets.training_weights)
    person_share: float = 0.0
    objective: str = "xent"
    scst_samples: int = 5  # objective "cider": captions sampled per image; each one's baseline is the others' mean
    # objective "cider": reward terms beside CIDEr-D (scst.py): credit for naming the candidate nouns the CNN is
    # sure of (and a cost for the ones it doubts), and a penalty per content word said again
    scst_grounding: float = 0.0
    scst_repetition: float = 0.0

    def validate(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {self.objective!r}; choose one of: {', '.join(OBJECTIVES)}")
        if self.scst_samples < 2:
            raise ConfigError(f"scst_samples must be >= 2 (each sample's baseline is the others' mean), "
                              f"got {self.scst_samples}")
        if self.scst_grounding < 0 or self.scst_repetition < 0:
            raise ConfigError("scst_grounding and scst_repetition must be >= 0")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"unknown scheduler {self.scheduler!r}; choose one of: {', '.join(SCHEDULERS)}")
        for name in ("epochs", "batch_size", "max_len", "min_freq", "max_vocab"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.scheduled_sampling <= 1.0:
            raise ConfigError(f"scheduled_sampling must be in [0, 1], got {self.scheduled_sampling}")
        if not 0.0 <= self.person_share < 1.0:
            raise ConfigError(f"person_share must be in [0, 1), got {self.person_share}")
        if not 0.0 <= self.copy_hide <= 1.0:
            raise ConfigError(f"copy_hide must be in [0, 1], got {self.copy_hide}")
        if self.lr <= 0 or self.encoder_lr <= 0:
            raise ConfigError("learning rates must be > 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return _from_dict(cls, data)


DECODE_METHODS = ("greedy", "beam", "sample")


@dataclass
class DecodeConfig:
    """How captions are generated. Defaults are what `caption`, `batch`, `evaluate` and the app use."""

    # Defaults measured on coco-mini val with the README's demo model (BLEU-4): greedy 0.087; beam 3 with
    # length penalty 0 / 0.5 / 1.0 / 1.5 / 2.0: 0.102 / 0.100 / 0.109 / 0.115 / 0.093; beam 5: 0.107 / 0.093 /
    # 0.110 / 0.114 / 0.079. A checkpoint may carry its own tuned `decode_config`, which then wins.
    method: str = "beam"
    beam_size: int = 3
    num_captions: int = 1  # n-best: how many captions per input (<= beam_size for beam search)
    max_len: int = 20  # words, not counting EOS
    min_len: int = 1
    length_penalty: float = 1.5  # GNMT alpha; 0 = plain log-prob
    no_repeat_ngram_size: int = 0  # 0 = off
    repetition_penalty: float = 1.0  # >1 discourages words already said (CTRL, Keskar et al. 2019); 1 = off
    suppress_unk: bool = True
    temperature: float = 1.0  # sampling only
    top_k: int = 0  # sampling only; 0 = off
    top_p: float = 1.0  # sampling only; 1 = off
    seed: int | None = None  # sampling only
    # copy models: when the CNN is confident of a noun (probability >= require_prob), the caption must name
    # one such noun: one that does not is searched again with constrained beam search (decoding._name_the_subject)
    require_object: bool = False
    require_prob: float = 0.5  # how sure the CNN must be of a noun for --require-object to insist on it
    # a content word (not grammar.FUNCTION_WORDS) may be said only once: no "a cat on top of a cat"
    no_repeat_words: bool = False
    # a caption may not end with an article, preposition or "is" (decoding.BAD_ENDINGS): no "... with a"
    no_bad_endings: bool = True
    # no article after a group's or a container's noun and "of" (decoding.COLLECTIVES): no "a group of a giraffe"
    no_article_after_collective: bool = True
    # models with a person detector (ModelConfig.person_gate): person words only where it says there is one
    person_gate: bool = False
    person_prob: float = 0.5  # how sure the detector must be of a person before a caption may say one
    # models with a fluent decoder too (fluent.py): its caption, unless the CNN is at least ground_prob sure of a
    # noun that caption does not name (then the grounded decoder's); its person words need the detector at
    # least fluent_person_prob sure
    fluent: bool = True
    ground_prob: float = 0.3
    fluent_person_prob: float = 0.5
    # where the photo is handed over, the grounded decoder's next-word log-probabilities plus `fusion` times the
    # fluent decoder's (shallow fusion); the fused caption is kept if it names a noun it was handed over for
    fusion: float = 0.25
    # copy models: a COCO object that ImageNet has classes for, but whose classes the CNN gives less than doubt_prob
    # in all, may not be said, singular or plural (decoding.doubt_ban: no "a toilet" beside a bulldog); 0 = off
    doubt_prob: float = 0.0

    def validate(self) -> None:
        if self.method not in DECODE_METHODS:
            raise ConfigError(f"unknown decoding method {self.method!r}; choose one of: {', '.join(DECODE_METHODS)}")
        if self.beam_size < 1 or self.num_captions < 1 or self.max_len < 1 or self.min_len < 0:
            raise ConfigError("beam_size, num_captions and max_len must be >= 1, min_len >= 0")
        if self.method == "beam" and self.num_captions > self.beam_size:
            raise ConfigError(f"num_captions ({self.num_captions}) must be <= beam_size ({self.beam_size})")
        if self.method == "greedy" and self.num_captions != 1:
            raise ConfigError("greedy decoding gives one caption; use --method beam or sample for several")
        if self.min_len > self.max_len:
            raise ConfigError(f"min_len ({self.min_len}) must be <= max_len ({self.max_len})")
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ConfigError("temperature must be > 0, top_p in (0, 1], top_k >= 0")
        for name in ("person_prob", "fluent_person_prob"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.fusion <= 10.0:
            raise ConfigError(f"fusion must be in [0, 10] (0 = the grounded decoder alone), got {self.fusion}")
        if not 0.0 < self.ground_prob <= 1.0:
            raise ConfigError(f"ground_prob must be in (0, 1], got {self.ground_prob}")
        if not 0.0 <= self.doubt_prob < 1.0:
            raise ConfigError(f"doubt_prob must be in [0, 1) (0 = off), got {self.doubt_prob}")
        if not 0.0 < self.require_prob <= 1.0:
            raise ConfigError(f"require_prob must be in (0, 1], got {self.require_prob}")
        if self.repetition_penalty < 1.0 or self.length_penalty < 0 or self.no_repeat_ngram_size < 0:
            raise ConfigError("repetition_penalty must be >= 1, length_penalty >= 0, no_repeat_ngram_size >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DecodeConfig":
        return _from_dict(cls, data)
