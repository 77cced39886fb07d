import numpy as np
import pytest

from mtlrec.metrics import auc, gauc, logloss, task_metrics


def test_auc_exact_values_and_ties():
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert auc([1, 0, 1], [0.9, 0.1, 0.8]) == 1.0
    assert np.isnan(auc([1, 1], [0.2, 0.3]))


def test_logloss_and_calibration():
    y, p = np.array([1, 0, 0, 0]), np.array([0.5, 0.5, 0.25, 0.25])
    assert logloss(y, p) == pytest.approx(-(np.log(0.5) * 2 + np.log(0.75) * 2) / 4)
    m = task_metrics(y, p)
    assert m["calibration"] == pytest.approx(0.375 / 0.25)
    assert m["rows"] == 4


def test_gauc_weights_users_by_impressions_and_skips_one_class_users():
    users = np.array([1, 1, 1, 2, 2, 3, 3])
    y = np.array([1, 0, 0, 0, 1, 1, 1])
    s = np.array([0.9, 0.1, 0.95, 0.8, 0.2, 0.5, 0.6])
    # user 1: AUC 0.5 over 3 rows; user 2: AUC 0 over 2 rows; user 3 has one class.
    assert gauc(users, y, s) == pytest.approx((0.5 * 3 + 0.0 * 2) / 5)


def test_masked_rows_are_left_out():
    m = task_metrics([1, 0, 1, 0], [0.9, 0.1, 0.0, 1.0], weights=[1, 1, 0, 0])
    assert m["auc"] == 1.0 and m["rows"] == 2
