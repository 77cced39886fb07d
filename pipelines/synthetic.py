"""A Tenrec-shaped generator: the embedded default dataset.

Writes `ctr_data_1M.csv`'s header with a planted, learnable signal:

- users and items follow power laws (activity, popularity);
- click = Bernoulli(sigmoid(z)), z = bias + <u, v> (user and item taste
  vectors) + A[age, category] + item quality + user bias. Item ids,
  user ids, age/category and the history all carry part of it: a user's
  history holds items close to their taste, so `hist` predicts click even
  for users seen rarely;
- a funnel: like, share and follow only after a click, with their own
  logits (quality and taste weigh more for like); `watching_times` > 0 only
  after a click (it gives click away: an outcome, never an input);
- rates near Tenrec: click ~24% of rows, like ~2%, share and follow < 1%.

Everything is vectorised numpy, seeded, and generated in chunks so memory
stays flat. `with_truth=True` adds the true probabilities (p_click, ...),
from which tests compute the Bayes-optimal AUC.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pandas as pd

from mtlrec.config import TENREC_HEADER

TASTE_DIM = 8
N_CATEGORIES = 30
N_AGES = 8
HIST_LEN = 10
# Target rates: P(click), P(like | click), P(share | click), P(follow | click).
CLICK_RATE = 0.24
CONDITIONAL_RATES = {"like": 0.085, "share": 0.025, "follow": 0.015}


def _zipf(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Power-law probabilities over n ids, ranks randomly assigned to ids."""
    w = 1.0 / np.arange(10, n + 10, dtype=np.float64) ** exponent
    rng.shuffle(w)
    return w / w.sum()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _fit_bias(logits: np.ndarray, rate: float, weights: np.ndarray | None = None) -> float:
    """The offset b with weighted mean(sigmoid(logits + b)) == rate (bisection)."""
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if np.average(_sigmoid(logits + mid), weights=weights) < rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclasses.dataclass
class World:
    """Users and items with their hidden attributes."""

    n_users: int
    n_items: int
    seed: int

    def __post_init__(self) -> None:
        rng = np.random.default_rng([self.seed, 0])
        nu, ni = self.n_users, self.n_items
        self.user_p = _zipf(nu, 0.8, rng)
        self.item_p = _zipf(ni, 1.0, rng)
        self.gender = rng.integers(0, 3, nu)
        self.age = rng.integers(0, N_AGES, nu)
        self.user_bias = rng.normal(0.0, 0.5, nu)
        self.category = rng.integers(1, N_CATEGORIES + 1, ni)
        centroids = rng.normal(0.0, 1.0, (N_CATEGORIES + 1, TASTE_DIM))
        self.item_taste = (centroids[self.category] + rng.normal(0, 0.7, (ni, TASTE_DIM))) / np.sqrt(
            TASTE_DIM
        )
        self.user_taste = rng.normal(0.0, 1.0, (nu, TASTE_DIM)) / np.sqrt(TASTE_DIM) * 1.6
        self.quality = rng.normal(0.0, 0.6, ni)
        self.affinity = rng.normal(0.0, 0.6, (N_AGES, N_CATEGORIES + 1))
        self.history = self._histories(rng)
        self._biases: dict[str, float] = {}
        self._calibrate(np.random.default_rng([self.seed, 1]))

    def _histories(self, rng: np.random.Generator) -> np.ndarray:
        """Each user's first clicked items (ids >= 1), 0-padded to HIST_LEN."""
        nu = self.n_users
        cand = rng.choice(self.n_items, size=(nu, 40), p=self.item_p)
        score = np.einsum("ud,ucd->uc", self.user_taste, self.item_taste[cand])
        score = score * 3.0 + rng.gumbel(size=score.shape)
        top = np.take_along_axis(cand, np.argsort(-score, axis=1)[:, :HIST_LEN], axis=1)
        length = np.minimum(rng.geometric(0.12, nu), HIST_LEN)
        hist = top + 1
        hist[np.arange(HIST_LEN)[None, :] >= length[:, None]] = 0
        return hist

    def _logits(self, users: np.ndarray, items: np.ndarray) -> dict[str, np.ndarray]:
        taste = np.einsum("nd,nd->n", self.user_taste[users], self.item_taste[items]) * 2.0
        q = self.quality[items]
        aff = self.affinity[self.age[users], self.category[items]]
        return {
            "click": taste + aff + q + self.user_bias[users],
            "like": 1.2 * taste + 1.6 * q + 0.5 * aff,
            "share": 0.8 * taste + 1.8 * q + 0.4 * (self.gender[users] == 1),
            "follow": 1.4 * taste + 0.8 * self.user_bias[users],
        }

    def _calibrate(self, rng: np.random.Generator) -> None:
        users = rng.choice(self.n_users, 50_000, p=self.user_p)
        items = rng.choice(self.n_items, 50_000, p=self.item_p)
        logits = self._logits(users, items)
        self._biases["click"] = _fit_bias(logits["click"], CLICK_RATE)
        # Conditional rates hold on clicked rows: weight rows by P(click).
        p_click = _sigmoid(logits["click"] + self._biases["click"])
        for name, rate in CONDITIONAL_RATES.items():
            self._biases[name] = _fit_bias(logits[name], rate, p_click)

    def sample(self, rows: int, rng: np.random.Generator, with_truth: bool = False) -> pd.DataFrame:
        users = rng.choice(self.n_users, rows, p=self.user_p)
        items = rng.choice(self.n_items, rows, p=self.item_p)
        frame = self.rows_for(users, items, rng, with_truth)
        hist = self.history[users]
        for i in range(HIST_LEN):
            frame[f"hist_{i + 1}"] = hist[:, i]
        return frame

    def rows_for(self, users: np.ndarray, items: np.ndarray, rng: np.random.Generator,
                 with_truth: bool = False) -> pd.DataFrame:
        """Outcomes and attributes of the (user, item) rows; hist columns 0."""
        rows = len(users)
        logits = self._logits(users, items)
        p = {k: _sigmoid(v + self._biases[k]) for k, v in logits.items()}
        click = rng.random(rows) < p["click"]
        cols: dict[str, np.ndarray] = {
            "user_id": users,
            "item_id": items + 1,
            "click": click.astype(np.int64),
        }
        for name in ("follow", "like", "share"):
            cols[name] = (click & (rng.random(rows) < p[name])).astype(np.int64)
        cols["video_category"] = self.category[items]
        watch = np.rint(np.exp(rng.normal(3.0 + 0.5 * self.quality[items], 0.8))) + 1
        cols["watching_times"] = np.where(click, watch, 0).astype(np.int64)
        cols["gender"] = self.gender[users]
        cols["age"] = self.age[users]
        for i in range(HIST_LEN):
            cols[f"hist_{i + 1}"] = np.zeros(rows, np.int64)
        frame = pd.DataFrame(cols, columns=TENREC_HEADER)
        if with_truth:
            frame["p_click"] = p["click"]
            for name in CONDITIONAL_RATES:
                frame[f"p_{name}"] = p["click"] * p[name]
        return frame


# The time-ordered log (`ordered=True`): the share of users and items there
# from the start; the rest arrive evenly over the log, so its last periods
# hold a cold tail of ids that earlier periods never saw.
FIRST_USERS, FIRST_ITEMS = 0.7, 0.6


class OrderedLog:
    """A time-ordered log of a `World`, chunk after chunk.

    Row t happens at time t / rows. A user (an item) can appear only after
    its arrival; `hist_1..hist_10` are the user's most recent clicks before
    the row (hist_1 the latest), from the log itself, so a new user's
    history is empty and fills as they click. Users' per-user click
    buffers (10 ids each) carry over from chunk to chunk.
    """

    def __init__(self, world: World, rows: int):
        self.world, self.rows = world, rows
        rng = np.random.default_rng([world.seed, 3])
        self.user_arrival = self._arrivals(world.n_users, FIRST_USERS, rng)
        self.item_arrival = self._arrivals(world.n_items, FIRST_ITEMS, rng)
        self.recent = np.zeros((world.n_users, HIST_LEN), np.int64)  # item ids + 1, latest first; 0: none

    @staticmethod
    def _arrivals(n: int, first: float, rng: np.random.Generator) -> np.ndarray:
        """Arrival time in [0, 1) of each id: 0 for the first share, the rest even."""
        arrival = np.zeros(n)
        late = rng.permutation(n)[: n - int(round(first * n))]
        arrival[late] = np.sort(rng.random(len(late)))
        return arrival

    def _draw(self, p: np.ndarray, arrival: np.ndarray, times: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Ids by popularity `p` among those arrived by each row's time."""
        ids = rng.choice(len(p), len(times), p=p)
        for _ in range(50):
            early = arrival[ids] > times
            if not early.any():
                return ids
            ids[early] = rng.choice(len(p), int(early.sum()), p=p)
        ids[arrival[ids] > times] = int(np.argmin(arrival))  # ever-present fallback
        return ids

    def sample(self, start: int, rows: int, rng: np.random.Generator, with_truth: bool = False) -> pd.DataFrame:
        w = self.world
        times = (start + np.arange(rows)) / self.rows
        users = self._draw(w.user_p, self.user_arrival, times, rng)
        items = self._draw(w.item_p, self.item_arrival, times, rng)
        frame = w.rows_for(users, items, rng, with_truth)
        hist = self._histories(users, items + 1, frame["click"].to_numpy() > 0)
        for i in range(HIST_LEN):
            frame[f"hist_{i + 1}"] = hist[:, i]
        return frame

    def _histories(self, users: np.ndarray, items: np.ndarray, clicked: np.ndarray) -> np.ndarray:
        """Each row's last HIST_LEN clicks of its user before it; updates the buffers."""
        n = len(users)
        order = np.lexsort((np.arange(n), users))  # by user, then time
        u, it, c = users[order], items[order], clicked[order]
        starts = np.r_[0, np.flatnonzero(u[1:] != u[:-1]) + 1]
        group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n]))
        clicks_through = np.cumsum(c)  # clicks of sorted rows 0..i
        before = clicks_through - c  # clicks before row i, all users
        first_click = before[starts][group]  # clicks before the user's first row in the chunk
        mine = before - first_click  # the user's clicks in this chunk before row i
        click_items = it[c]  # in sorted order: the j-th click overall
        hist = np.zeros((n, HIST_LEN), np.int64)
        carry = self.recent[u]
        for k in range(1, HIST_LEN + 1):
            in_chunk = mine >= k
            idx = np.where(in_chunk, first_click + mine - k, 0)
            from_chunk = click_items[idx] if len(click_items) else np.zeros(n, np.int64)
            back = np.clip(k - mine - 1, 0, HIST_LEN - 1)
            hist[:, k - 1] = np.where(in_chunk, from_chunk, np.where(k - mine - 1 < HIST_LEN,
                                                                    carry[np.arange(n), back], 0))
        # The buffers after the chunk: the history a row after the user's last one would see.
        last = np.r_[starts[1:] - 1, n - 1]
        total = mine[last] + c[last]
        for row, t in zip(last, total):
            user = u[row]
            new = click_items[first_click[row]: first_click[row] + t][::-1][:HIST_LEN]
            self.recent[user] = np.r_[new, self.recent[user]][:HIST_LEN]
        out = np.empty_like(hist)
        out[order] = hist
        return out


def default_sizes(rows: int) -> tuple[int, int]:
    """Users and items for `rows` rows, at Tenrec's rows-per-id ratios."""
    return max(200, rows // 100), max(500, rows // 40)


def generate(
    rows: int,
    seed: int = 0,
    n_users: int | None = None,
    n_items: int | None = None,
    chunk_rows: int = 500_000,
    with_truth: bool = False,
    ordered: bool = False,
):
    """Yields DataFrames of at most `chunk_rows` rows, `rows` in total.
    `ordered`: a time-ordered log (`OrderedLog`) instead of rows drawn
    independently with a static history per user."""
    du, di = default_sizes(rows)
    world = World(n_users or du, n_items or di, seed)
    log = OrderedLog(world, rows) if ordered else None
    for k, start in enumerate(range(0, rows, chunk_rows)):
        rng = np.random.default_rng([seed, 2, k])
        n = min(chunk_rows, rows - start)
        yield log.sample(start, n, rng, with_truth) if log else world.sample(n, rng, with_truth)


def write_csv(path: str, rows: int, seed: int = 0, **kwargs) -> str:
    """Writes the generated dataset as a Tenrec CSV (atomically)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for i, frame in enumerate(generate(rows, seed, **kwargs)):
            frame.to_csv(f, header=i == 0, index=False)
    os.replace(tmp, path)
    return path
