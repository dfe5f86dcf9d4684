"""Vocabulary parsing (real files), null-baseline scoring on vectors with a known answer,
adaptive label sets, and the prompt-embedding cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_EMBEDDER, FakeEmbedder, unit

from neuronatlas.core.errors import InvalidArgument, NotFound
from neuronatlas.core.labels import (
    DEFAULT_TEMPLATES,
    LabelScorer,
    combined_label_sets,
    load_vocabulary,
    parse_label_line,
    prompt,
)
from neuronatlas.core.records import EmbedderInfo

WORDS = ["cat", "dog", "car", "tree"]
DIM = 8


def word_vector(text: str) -> np.ndarray:
    """e0 ("generic prompt") + 2 * e_word for each known word in ``text``."""
    v = np.zeros(DIM, np.float32)
    v[0] = 1.0
    for j, w in enumerate(WORDS):
        if w in text.split() or f"{w}." in text.split():
            v[1 + j] += 2.0
    return v


def word_embedder() -> FakeEmbedder:
    """Text -> e0 + 2 * e_word per known word, normalised. The null prompt maps to e0 exactly,
    so expected scores can be written down by hand."""
    return FakeEmbedder(EmbedderInfo(name="test:words", weights="fixed", dim=DIM), word_vector)


def e(i):
    return np.eye(DIM)[i]


@pytest.fixture()
def scorer():
    return LabelScorer(word_embedder(), WORDS, name="words")


# -- vocabularies -------------------------------------------------------------------------
def test_parse_label_line_formats():
    assert parse_label_line("/a/airfield 0") == "airfield"
    assert parse_label_line("/a/apartment_building/outdoor 9") == "apartment building outdoor"
    assert parse_label_line("great white shark, white shark, man-eater") == "great white shark"
    assert parse_label_line("n01440764 tench, Tinca tinca") == "tench"
    assert parse_label_line("  wine cellar-bottle storage  ") == "wine cellar-bottle storage"
    assert parse_label_line("   ") == "" and parse_label_line("# comment") == ""


def test_load_vocabulary_real_files(concepts_dir: Path):
    imagenet = load_vocabulary(concepts_dir / "imagenet_labels.txt")
    assert imagenet[:3] == ["tench", "goldfish", "great white shark"]
    assert 990 <= len(imagenet) < 1000  # a few ImageNet names repeat (crane, maillot)
    assert not any("," in l for l in imagenet)
    places = load_vocabulary(concepts_dir / "categories_places365.txt")
    assert places[0] == "airfield" and "apartment building outdoor" in places
    assert len(places) == 365 and not any("/" in l or l[-1].isdigit() for l in places)
    for name in ("broden_labels_clean.txt", "3k.txt", "20k.txt"):
        vocab = load_vocabulary(concepts_dir / name)
        raw = [l.strip() for l in (concepts_dir / name).read_text().splitlines() if l.strip()]
        assert vocab[0] == raw[0]
        assert len({l.lower() for l in vocab}) == len(vocab)
        assert all(l and l == l.strip() for l in vocab)
        assert len(vocab) == len({l.lower() for l in raw})


def test_load_vocabulary_dedups_and_errors(tmp_path: Path):
    f = tmp_path / "v.txt"
    f.write_text("cat\n\nDog\ncat\ndog, puppy\n  tree \n")
    assert load_vocabulary(f) == ["cat", "Dog", "tree"]
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(InvalidArgument):
        load_vocabulary(tmp_path / "empty.txt")
    with pytest.raises(NotFound):
        load_vocabulary(tmp_path / "missing.txt")


# -- scoring ------------------------------------------------------------------------------
def test_prompt_null_is_clean():
    assert prompt("a photo of a {}.", "") == "a photo of a."
    assert prompt("an image of {}.", "red car") == "an image of red car."


def test_scores_null_baseline_known_answer(scorer: LabelScorer):
    # x = e_cat: cos(x, norm(e0 + 2 e_cat)) - cos(x, e0) = 2/sqrt(5) - 0
    s = scorer.scores(e(1)[None])
    assert s.shape == (1, 4) and s.dtype == np.float32
    np.testing.assert_allclose(s[0], [2 / np.sqrt(5), 0, 0, 0], atol=1e-6)
    # x = e0 looks like the empty prompt: every label scores 1/sqrt(5) - 1 < 0
    np.testing.assert_allclose(scorer.scores(e(0))[0], [1 / np.sqrt(5) - 1] * 4, atol=1e-6)
    # scale does not matter (vectors are re-normalised)
    np.testing.assert_allclose(scorer.scores(5 * e(1)), s, atol=1e-6)


def test_scores_match_reference_formula(scorer: LabelScorer):
    emb = word_embedder()
    x = unit(np.random.default_rng(0).normal(size=(7, DIM)))

    def prompt_vec(label):
        return unit(
            np.mean([emb.encode_text([prompt(t, label)])[0] for t in DEFAULT_TEMPLATES], axis=0)
        )

    expected = np.array([[xi @ prompt_vec(w) - xi @ prompt_vec("") for w in WORDS] for xi in x])
    np.testing.assert_allclose(scorer.scores(x), expected, atol=1e-5)
    with pytest.raises(InvalidArgument):
        scorer.scores(np.ones((2, DIM + 1)))


def test_scores_are_bounded_by_the_prompt_distance_and_can_exceed_one(scorer: LabelScorer):
    """score(x) = x . (l - n) <= |l - n| = sqrt(2 - 2 cos(l, n)): above 1 exactly when the
    label's prompt is more than 60 degrees from the empty prompt (here cos = 1/sqrt(5))."""
    cos_ln = scorer.label_matrix @ scorer.null_vector
    bound = np.sqrt(2 - 2 * cos_ln)
    np.testing.assert_allclose(cos_ln, 1 / np.sqrt(5), atol=1e-6)
    x = unit(np.random.default_rng(1).normal(size=(500, DIM)))
    assert (scorer.scores(x) <= bound + 1e-6).all()
    best = scorer.scores(scorer.label_matrix[0] - scorer.null_vector)[0, 0]  # x along l - n
    assert best == pytest.approx(bound[0], abs=1e-6) and best > 1.0


def test_top_labels_sorted(scorer: LabelScorer):
    x = unit(np.stack([e(2) + 0.5 * e(4), e(3)]))
    top = scorer.top(x, n=2)
    assert [l.label for l in top[0]] == ["dog", "tree"]
    assert top[0][0].score > top[0][1].score > 0
    assert top[1][0].label == "car" and len(scorer.top(x, n=10)[0]) == 4


def test_label_sets_adaptive_beta(scorer: LabelScorer):
    close = unit(e(1) + 0.98 * e(2))  # cat and dog almost tied
    clear = unit(e(1) + 0.5 * e(2))
    generic = e(0)  # best score <= 0 -> no label at all
    sets = scorer.label_sets(np.stack([close, clear, generic]), beta=0.95)
    assert sets == [["cat", "dog"], ["cat"], []]
    assert scorer.label_sets(clear, beta=0.4) == [["cat", "dog"]]
    assert scorer.label_sets(close, beta=0.95, limit=1) == [["cat"]]
    with pytest.raises(InvalidArgument):
        scorer.label_sets(close, beta=0)


def test_combined_label_sets_across_vocabularies():
    emb = word_embedder()
    animals = LabelScorer(emb, ["cat", "dog"], name="animals")
    things = LabelScorer(emb, ["car", "tree", "dog"], name="things")
    x = unit(e(2) + 0.97 * e(3))  # dog ~ car
    assert combined_label_sets([animals, things], x[None], beta=0.95) == [["dog", "car"]]


def test_prompt_cache_dir_reuses_embeddings(tmp_path: Path):
    emb = word_embedder()
    first = LabelScorer(emb, WORDS, cache_dir=tmp_path)
    calls = emb.calls
    assert calls > 0 and len(list(tmp_path.glob("labels-*.npy"))) == 1
    again = LabelScorer(emb, WORDS, cache_dir=tmp_path)
    assert emb.calls == calls  # loaded, not re-encoded
    np.testing.assert_array_equal(first.label_matrix, again.label_matrix)
    LabelScorer(emb, WORDS[:2], cache_dir=tmp_path)  # other labels -> other key
    assert len(list(tmp_path.glob("labels-*.npy"))) == 2


def test_scorer_rejects_bad_input():
    with pytest.raises(InvalidArgument):
        LabelScorer(word_embedder(), [])
    with pytest.raises(InvalidArgument):
        LabelScorer(word_embedder(), WORDS, templates=["no placeholder"])


def test_scorer_with_tiny_open_clip(concepts_dir: Path):
    from neuronatlas.core.embedder import load_embedder

    emb = load_embedder(TINY_EMBEDDER, device="cpu")
    vocab = load_vocabulary(concepts_dir / "categories_places365.txt")
    scorer = LabelScorer(emb, vocab, name="places", templates=("a photo of a {}.",))
    x = emb.encode_text(["a photo of a airfield."])
    s = scorer.scores(x)
    assert s.shape == (1, 365) and np.isfinite(s).all()
    assert np.allclose(np.linalg.norm(scorer.label_matrix, axis=1), 1.0, atol=1e-5)
    assert len(scorer.top(x, n=5)[0]) == 5
