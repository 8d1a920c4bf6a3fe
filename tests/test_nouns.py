"""What the CNN sees: the ImageNet class -> caption noun table, and candidate nouns of real images."""
import pytest
import torch

from captioner.encoder import LITE0_TRANSFORM, ImageEncoder, build_backbone
from captioner.grounding import COCO_OBJECTS
from captioner.media import build_transform, load_image
from captioner.nouns import NounSpace, default_nouns, load_table, strongest_classes
from conftest import DATA

# (class index, class name) -> the canonical caption word, plus a word that must be among the row's words
PINNED = {
    (151, "Chihuahua"): ("dog", "chihuahua"), (207, "golden retriever"): ("dog", "golden retriever"),
    (281, "tabby"): ("cat", "cat"), (283, "Persian cat"): ("cat", "cat"), (284, "Siamese cat"): ("cat", "cat"),
    (948, "Granny Smith"): ("apple", "fruit"), (335, "fox squirrel"): ("squirrel", "squirrel"),
    (323, "monarch"): ("butterfly", "monarch"), (321, "admiral"): ("butterfly", "butterfly"),
    (967, "espresso"): ("coffee", "espresso"), (779, "school bus"): ("bus", "school bus"),
    (874, "trolleybus"): ("bus", "trolley"), (812, "space shuttle"): ("space shuttle", "rocket"),
    (963, "pizza"): ("pizza", "pizza"), (752, "racket"): ("racket", "racket"), (879, "umbrella"): ("umbrella", "umbrella"),
    (670, "motor scooter"): ("scooter", "motorcycle"), (665, "moped"): ("moped", "motorcycle"),
    (385, "Indian elephant"): ("elephant", "elephant"), (101, "tusker"): ("elephant", "elephant"),
    (340, "zebra"): ("zebra", "zebra"), (291, "lion"): ("lion", "lion"), (292, "tiger"): ("tiger", "tiger"),
    (7, "cock"): ("chicken", "rooster"), (99, "goose"): ("goose", "bird"), (1, "goldfish"): ("fish", "goldfish"),
    (404, "airliner"): ("airplane", "plane"), (817, "sports car"): ("car", "sports car"),
    (671, "mountain bike"): ("bike", "bicycle"), (954, "banana"): ("banana", "banana"),
    (934, "hotdog"): ("hot dog", "hot dog"), (850, "teddy"): ("teddy bear", "bear"),
    (620, "laptop"): ("laptop", "computer"), (487, "cellular telephone"): ("cell phone", "phone"),
    (760, "refrigerator"): ("refrigerator", "fridge"), (978, "seashore"): ("beach", "shore"),
    (970, "alp"): ("mountain", "mountain"), (992, "agaric"): ("mushroom", "mushroom"),
    (339, "sorrel"): ("horse", "horse"), (345, "ox"): ("cow", "cattle"), (130, "flamingo"): ("flamingo", "bird"),
}


def test_table_has_one_row_per_class_with_one_to_three_lowercase_words():
    table = load_table()
    assert len(table) == 1000
    assert all(1 <= len(row) <= 3 and all(w == w.lower().strip() and w for w in row) for row in table)
    assert all(len(set(row)) == len(row) for row in table)  # no repeats within a row


@pytest.mark.parametrize("cls, expected", sorted(PINNED.items()), ids=lambda v: str(v))
def test_pinned_rows(cls, expected):
    row = load_table()[cls[0]]
    canonical, also = expected
    assert row[0] == canonical and also in row, row


def test_no_animal_class_is_named_by_a_word_captions_use_for_another_coco_object():
    """The bird of prey ImageNet calls "kite" is not the toy COCO's captions mean by "kite": an animal class
    (ImageNet's first 398) lists no word of a COCO category other than COCO's animals, so a photo of a hawk
    never hands the decoder the toy's word."""
    coco_animals = {"bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe"}
    clashes = [(i, w) for i, row in enumerate(load_table()[:398]) for w in row
               if w.replace(" ", "_") in COCO_OBJECTS and w not in coco_animals]
    assert clashes == []
    assert load_table()[21] == ("bird", "hawk")  # ImageNet's "kite"


def test_noun_probabilities_sum_the_classes_that_name_a_noun():
    space = NounSpace([("dog", "puppy"), ("dog",), ("cat",), ("teddy bear", "bear")])
    assert space.words == ["dog", "puppy", "cat", "bear"]  # multi-word names are not caption tokens
    probs = space.noun_probs(torch.tensor([[0.5, 0.2, 0.2, 0.1]]))
    assert torch.allclose(probs, torch.tensor([[0.7, 0.5, 0.2, 0.1]]))
    emb = space.visual_embeddings(torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 2.0]]))
    assert torch.allclose(emb[0], torch.tensor([2.0, 0.0]))  # the mean of its classes' weight rows
    cands = space.candidates(torch.tensor([[0.5, 0.2, 0.2, 0.1]]), k=3, threshold=0.15)[0]
    assert [(c.word, c.prob) for c in cands] == [("dog", 0.7), ("puppy", 0.5), ("cat", 0.2)]


def lite0_class_probs(name: str) -> torch.Tensor:
    """The pretrained EfficientNet-Lite0's ImageNet class probabilities (1,C) of a coco-mini train photo."""
    encoder = ImageEncoder(build_backbone("efficientnet_lite0", "pretrained"), pool=True).eval()
    image = build_transform(LITE0_TRANSFORM)(load_image(DATA / "coco-mini" / "train2017" / name))
    with torch.no_grad():
        return encoder.class_probs(encoder(image.unsqueeze(0)).squeeze(1))

def test_only_the_strongest_classes_count_toward_a_noun():
    probs = torch.tensor([[0.5, 0.2, 0.2, 0.1], [0.1, 0.1, 0.1, 0.7]])
    assert torch.equal(strongest_classes(probs, 0), probs)
    assert torch.equal(strongest_classes(probs, 4), probs)
    assert torch.equal(strongest_classes(probs, 1), torch.tensor([[0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.7]]))
    space = NounSpace([("dog",), ("dog",), ("dog",), ("cat",)])
    # the three dog classes hold 0.3 of the second image between them, none of them among its strongest 2
    assert torch.allclose(space.noun_probs(probs, 2), torch.tensor([[0.7, 0.0], [0.1, 0.7]]))
    cands = space.candidates(probs[1:], threshold=0.05, top_classes=2)[0]
    assert [(c.word, c.prob) for c in cands] == [("cat", 0.7), ("dog", 0.1)]


def test_a_noun_of_many_classes_does_not_collect_the_classifiers_floor():
    """A real photo of elephants: no dog in it, no dog breed among the CNN's 10 strongest classes, yet the 120
    breeds' floor sums to a "dog" the CNN has no evidence for; counting only the 10 strongest removes it and
    keeps what the CNN does see."""
    probs = lite0_class_probs("000000054718.jpg")
    nouns = default_nouns()
    dog, elephant = nouns.index["dog"], nouns.index["elephant"]
    breeds = nouns.membership[:, dog].bool()
    assert int(breeds.sum()) >= 100 and float(probs[0, breeds].max()) < 0.01
    every, strongest = nouns.noun_probs(probs)[0], nouns.noun_probs(probs, 10)[0]
    assert float(every[dog]) > 5 * float(strongest[dog])
    assert float(strongest[elephant]) == pytest.approx(float(every[elephant]), abs=0.02)


def test_what_the_cnn_sees_lists_only_nouns_among_its_top_5_guesses():
    """A COCO photo of birds and a boat by a shore: the 120 dog breeds' floor sums to "dog 0.16", the most
    probable noun, though no breed is among the CNN's five best guesses; it is not listed, the rest are, with
    the probabilities the decoder reads."""
    probs = lite0_class_probs("000000211325.jpg")
    nouns = default_nouns()
    every = nouns.candidates(probs, guesses=0)[0]
    shown = nouns.candidates(probs)[0]
    assert every[0].word == "dog" and every[0].prob > 0.1
    assert "dog" not in [c.word for c in shown]
    top5 = set(probs[0].topk(5).indices.tolist())
    for c in every:
        classes = set(nouns.membership[:, nouns.index[c.word]].nonzero().flatten().tolist())
        assert (c in shown) == bool(classes & top5), c


def test_the_cnn_names_real_photos():
    encoder = ImageEncoder(build_backbone("efficientnet_lite0", "pretrained"), pool=True).eval()
    assert encoder.has_classifier
    transform = build_transform(LITE0_TRANSFORM)
    photos = {"000000054718.jpg": "elephant", "000000000790.jpg": "table"}
    images = torch.stack([transform(load_image(DATA / "coco-mini" / "train2017" / n)) for n in photos])
    with torch.no_grad():
        probs = encoder.class_probs(encoder(images).squeeze(1))
    assert torch.allclose(probs.sum(1), torch.ones(2), atol=1e-4)
    for cands, word in zip(default_nouns().candidates(probs), photos.values()):
        assert cands[0].word == word, cands


def test_random_weights_have_no_classifier():
    encoder = ImageEncoder(build_backbone("resnet18", "none"), pool=True)
    assert not encoder.has_classifier
    with pytest.raises(ValueError, match="no pretrained ImageNet classifier"):
        encoder.class_probs(torch.zeros(1, 512))
