"""SSD loss on hand-made cases: 6 anchors, 2 object classes (3 logits with background)."""

import keras
import numpy as np
import pytest

from mobilevision.tasks.detection_loss import (SSDLoss, mine_hard_negatives, sigmoid_focal_loss,
                                               ssd_loss_terms)

# One image: anchor 0 positive (class 1), 1 2 3 5 background, 4 ignored (crowd).
LABELS = np.array([[1, 0, 0, 0, -1, 0]], np.int32)
LOGITS = np.array([[[0, 1, 0],     # positive: CE = log(2 + e) - 1 = 0.5514
                    [0, 0, 0],     # CE = log 3 = 1.0986            mined (3rd)
                    [0, 2, 0],     # CE = log(2 + e^2) = 2.2395     mined (1st)
                    [3, 0, 0],     # CE = log(e^3 + 2) - 3 = 0.0949 not mined (lowest)
                    [0, 10, 0],    # ignored: the largest loss, must not be mined
                    [0, 0, 1]]],   # CE = log(2 + e) = 1.5514       mined (2nd)
                  np.float32)
BOX_TARGETS = np.zeros((1, 6, 4), np.float32)
BOX_TARGETS[0, 0] = [0.5, -0.2, 2.0, 0.0]
# Every anchor but the positive is far off its (zero) target: none of that may count.
BOX_PREDS = np.full((1, 6, 4), 5.0, np.float32)
BOX_PREDS[0, 0] = 0.0
# Smooth L1 of the positive, |d| = 0.5, 0.2, 2.0, 0: 0.125 + 0.02 + (2.0 - 0.5) + 0 = 1.645.
LOC = 1.645


def _ce(logits, label):
    """Reference softmax cross-entropy of one anchor."""
    return float(np.log(np.sum(np.exp(logits))) - logits[label])


def _case(labels=LABELS, logits=LOGITS, box_targets=BOX_TARGETS, box_preds=BOX_PREDS):
    y_true = {"boxes": box_targets, "classes": labels}
    y_pred = {"boxes": box_preds, "classes": logits}
    return y_true, y_pred


def _value(x):
    return float(keras.ops.convert_to_numpy(x))


def test_hand_made_case():
    ce = [_ce(LOGITS[0, a], LABELS[0, a]) for a in range(6)]
    np.testing.assert_allclose(ce[0], np.log(2 + np.e) - 1, rtol=1e-6)
    # 1 positive -> 3 negatives mined: anchors 2, 5, 1 (the ignored anchor 4 is not a candidate).
    mined = mine_hard_negatives(keras.ops.convert_to_tensor(np.array([ce], np.float32)),
                                LABELS == 0, np.array([1.0], np.float32))
    assert keras.ops.convert_to_numpy(mined)[0].tolist() == [False, True, True, False, False,
                                                               True]
    cls = ce[0] + ce[1] + ce[2] + ce[5]
    terms = ssd_loss_terms(*_case())
    np.testing.assert_allclose(_value(terms["loc"]), LOC, rtol=1e-5)
    np.testing.assert_allclose(_value(terms["cls"]), cls, rtol=1e-5)
    assert _value(terms["num_pos"]) == 1.0
    np.testing.assert_allclose(_value(SSDLoss()(*_case())), LOC + cls, rtol=1e-5)
    weighted = SSDLoss(loc_weight=2.0, cls_weight=0.5)(*_case())
    np.testing.assert_allclose(_value(weighted), 2 * LOC + 0.5 * cls, rtol=1e-5)
    # Tuple targets and float labels (Keras hands y_true over as floats) read the same.
    y_pred = _case()[1]
    np.testing.assert_allclose(_value(SSDLoss()((BOX_TARGETS, LABELS.astype("float32")), y_pred)),
                               LOC + cls, rtol=1e-5)


def test_negative_ratio_caps_at_available_negatives():
    labels = np.array([[1, 2, 0, 0, -1, 0]], np.int32)  # 2 positives: k = 6, only 3 negatives
    cls = sum(_ce(LOGITS[0, a], labels[0, a]) for a in (0, 1, 2, 3, 5))
    terms = ssd_loss_terms(*_case(labels=labels))
    np.testing.assert_allclose(_value(terms["cls"]), cls / 2, rtol=1e-5)
    ratio1 = ssd_loss_terms(*_case(labels=labels), negative_ratio=1.0)  # k = 2: anchors 2, 5
    cls1 = sum(_ce(LOGITS[0, a], labels[0, a]) for a in (0, 1, 2, 5))
    np.testing.assert_allclose(_value(ratio1["cls"]), cls1 / 2, rtol=1e-5)


def test_ties_mine_exactly_k():
    # A fresh head predicts the same logits everywhere: every negative ties.
    losses = np.ones((2, 6), np.float32)
    negatives = np.array([[False, True, True, True, True, True],
                          [True, True, True, True, True, True]])
    mined = mine_hard_negatives(losses, negatives, np.array([1.0, 0.0], np.float32),
                                min_negatives=1)
    assert keras.ops.convert_to_numpy(mined).sum(axis=1).tolist() == [3, 1]


def test_zero_positives():
    labels = np.array([[0, 0, 0, 0, -1, 0]], np.int32)
    loss = _value(SSDLoss()(*_case(labels=labels)))
    assert loss == 0.0  # k = 0 negatives, nothing to localize, normalizer max(1, 0) = 1
    # min_negatives mines the two hardest negatives anyway (anchors 2 and 5), divided by 1.
    loss = _value(SSDLoss(min_negatives=2)(*_case(labels=labels)))
    expected = _ce(LOGITS[0, 2], 0) + _ce(LOGITS[0, 5], 0)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    focal = _value(SSDLoss(classification="focal")(*_case(labels=labels)))
    assert np.isfinite(focal) and focal > 0  # focal trains every non-ignored negative


@pytest.mark.parametrize("classification", ["softmax", "focal"])
def test_ignored_anchors_contribute_nothing(classification):
    loss = SSDLoss(classification=classification)
    logits, box_preds = LOGITS.copy(), BOX_PREDS.copy()
    logits[0, 4] = [-7.0, 3.0, 9.0]
    box_preds[0, 4] = -40.0
    changed = _value(loss(*_case(logits=logits, box_preds=box_preds)))
    assert changed == pytest.approx(_value(loss(*_case())), rel=1e-6)
    # ...and equal to the loss of the same image with anchor 4 removed altogether.
    keep = [0, 1, 2, 3, 5]
    removed = _value(loss(*_case(LABELS[:, keep], LOGITS[:, keep], BOX_TARGETS[:, keep],
                                 BOX_PREDS[:, keep])))
    assert changed == pytest.approx(removed, rel=1e-6)


def test_batch_normalizes_by_total_matches():
    rng = np.random.default_rng(0)
    labels1 = np.array([[2, 0, 2, 0, 0, -1]], np.int32)  # 2 positives: all 3 negatives mined
    logits1 = rng.normal(size=(1, 6, 3)).astype(np.float32)
    targets1 = rng.normal(size=(1, 6, 4)).astype(np.float32) * (labels1[..., None] > 0)
    preds1 = rng.normal(size=(1, 6, 4)).astype(np.float32)
    raw1 = sum(_ce(logits1[0, a], labels1[0, a]) for a in range(5))
    d = np.abs(preds1[0, [0, 2]] - targets1[0, [0, 2]])
    raw1 += float(np.where(d < 1, 0.5 * d**2, d - 0.5).sum())
    raw0 = _value(SSDLoss()(*_case()))  # 1 positive, so its loss is its raw sum

    y_true, y_pred = _case(np.concatenate([LABELS, labels1]), np.concatenate([LOGITS, logits1]),
                           np.concatenate([BOX_TARGETS, targets1]),
                           np.concatenate([BOX_PREDS, preds1]))
    np.testing.assert_allclose(_value(SSDLoss()(y_true, y_pred)), (raw0 + raw1) / 3, rtol=1e-5)
    terms = ssd_loss_terms(y_true, y_pred)
    assert _value(terms["num_pos"]) == 3.0
    np.testing.assert_allclose(_value(terms["loc"]) + _value(terms["cls"]), (raw0 + raw1) / 3,
                               rtol=1e-5)
    per_image = ssd_loss_terms(y_true, y_pred, per_image=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(per_image["num_pos"]), [1, 2])
    # A sample weight drops an image's share; the normalizer still counts its positives.
    weighted = SSDLoss()(y_true, y_pred, sample_weight=np.array([1.0, 0.0], np.float32))
    np.testing.assert_allclose(_value(weighted), raw0 / 3, rtol=1e-5)


def _numpy_focal(logits, labels, alpha=0.25, gamma=2.0):
    """Reference: sigmoid focal loss over classes 1..K of non-ignored anchors / positives."""
    x = logits[..., 1:].astype(np.float64)
    z = np.zeros_like(x)
    for idx in zip(*np.nonzero(labels > 0)):
        z[idx + (labels[idx] - 1,)] = 1.0
    p = 1 / (1 + np.exp(-x))
    bce = -(z * np.log(p) + (1 - z) * np.log(1 - p))
    p_t = np.where(z == 1, p, 1 - p)
    alpha_t = np.where(z == 1, alpha, 1 - alpha)
    per_anchor = (alpha_t * (1 - p_t) ** gamma * bce).sum(-1) * (labels >= 0)
    return per_anchor.sum() / max(1, (labels > 0).sum())


def test_focal_matches_numpy_reference():
    rng = np.random.default_rng(1)
    labels = np.array([[1, 0, 2, 0, -1, 0], [0, 0, 0, 2, 2, -1]], np.int32)
    logits = rng.normal(scale=2.0, size=(2, 6, 3)).astype(np.float32)
    targets = np.zeros((2, 6, 4), np.float32)
    preds = np.zeros((2, 6, 4), np.float32)  # no localization loss: the focal part alone
    loss = SSDLoss(classification="focal")(*_case(labels, logits, targets, preds))
    np.testing.assert_allclose(_value(loss), _numpy_focal(logits, labels), rtol=1e-5)
    loss = SSDLoss(classification="focal", focal_alpha=0.5, focal_gamma=1.0)(
        *_case(labels, logits, targets, preds))
    np.testing.assert_allclose(_value(loss), _numpy_focal(logits, labels, 0.5, 1.0), rtol=1e-5)
    # The background column takes no part.
    per_anchor = sigmoid_focal_loss(logits + np.array([50.0, 0, 0], np.float32), labels)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(per_anchor),
                               keras.ops.convert_to_numpy(sigmoid_focal_loss(logits, labels)),
                               rtol=1e-6)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="uses tf.GradientTape")
@pytest.mark.parametrize("classification", ["softmax", "focal"])
@pytest.mark.parametrize("labels", [LABELS, np.array([[0, 0, 0, -1, 0, 0]], np.int32)],
                         ids=["positives", "no_positives"])
def test_gradients_are_finite_and_only_where_trained(classification, labels):
    import tensorflow as tf

    boxes, logits = tf.Variable(BOX_PREDS), tf.Variable(LOGITS)
    y_true = {"boxes": BOX_TARGETS, "classes": labels}
    with tf.GradientTape() as tape:
        loss = SSDLoss(classification=classification)(y_true, {"boxes": boxes,
                                                               "classes": logits})
    g_boxes, g_logits = (g.numpy() for g in tape.gradient(loss, [boxes, logits]))
    assert np.isfinite(loss.numpy()) and np.isfinite(g_boxes).all()
    assert np.isfinite(g_logits).all()
    trained_boxes = np.abs(g_boxes[0]).sum(-1) > 0
    assert trained_boxes.tolist() == (labels[0] > 0).tolist()
    trained_logits = (np.abs(g_logits[0]).sum(-1) > 0).tolist()
    if classification == "focal":
        assert trained_logits == (labels[0] >= 0).tolist()
    elif labels[0, 0] == 1:
        assert trained_logits == [True, True, True, False, False, True]  # positive + mined
    else:
        assert not any(trained_logits)


def test_get_config_round_trip():
    loss = SSDLoss(classification="focal", negative_ratio=2.0, min_negatives=3, focal_alpha=0.3,
                   focal_gamma=1.5, huber_delta=0.5, loc_weight=2.0, cls_weight=0.5, name="det")
    config = loss.get_config()
    assert SSDLoss.from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(restored, SSDLoss) and restored.get_config() == config
    assert _value(restored(*_case())) == pytest.approx(_value(loss(*_case())), rel=1e-6)
    with pytest.raises(ValueError, match="classification"):
        SSDLoss(classification="sigmoid")


def test_trains_from_compute_loss():
    """The wiring the detection task uses: a functional model whose compute_loss calls SSDLoss."""

    class SSDModel(keras.Model):
        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            loss = self.ssd_loss(y, y_pred, sample_weight)
            return loss + sum(self.losses) if self.losses else loss

    inputs = keras.Input((8,))
    boxes = keras.layers.Reshape((6, 4))(keras.layers.Dense(24)(inputs))
    classes = keras.layers.Reshape((6, 3))(keras.layers.Dense(18)(inputs))
    model = SSDModel(inputs, {"boxes": boxes, "classes": classes})
    model.ssd_loss = SSDLoss()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=None)
    x = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    y = {"boxes": np.repeat(BOX_TARGETS, 4, 0), "classes": np.repeat(LABELS, 4, 0)}
    history = model.fit(x, y, batch_size=2, epochs=3, verbose=0).history["loss"]
    assert np.isfinite(history).all() and history[-1] < history[0]
