"""The :class:`Head` interface and the registry of heads by name."""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..grades import DEFAULT_THRESHOLDS, GRADES, cut

#: every head by its config name, in the order they are listed in ``--help``
HEADS: dict[str, Head] = {}


class Head:
    """What one kind of head does, end to end. Subclasses set the class attributes and override what differs.

    ``outputs`` always means the served outputs (after :meth:`activate`): what ``oof.csv``, ``test_outputs.csv``,
    the ONNX files and the web app carry, one column per name in :attr:`columns`."""

    name: str = ""
    help: str = ""
    #: the network's raw outputs per image
    n_out: int = len(GRADES)
    #: names of the served outputs, the columns of oof.csv and test_outputs.csv
    columns: tuple[str, ...] = ()
    #: fastai's SigmoidRange on the raw outputs (a regression's range), or None
    y_range: tuple[float, float] | None = None
    #: the loader feeds grades as categories (an index per image) rather than numbers (which may be soft)
    categorical_targets: bool = False
    #: the untuned rule cuts the continuous score at the default thresholds (rather than the head's own rule)
    cuts_scores: bool = True
    #: the untuned grade is the most probable of :meth:`grade_probabilities` (a near tie is between the top two);
    #: else it follows the score (a near tie is a score near a threshold)
    argmax_grade: bool = False

    # ------------------------------------------------------------------------------------- numpy side
    def scores(self, outputs: np.ndarray) -> np.ndarray:
        """One continuous number per image, on the grade scale (what thresholds cut and ensembles average)."""
        raise NotImplementedError

    def own_grades(self, outputs: np.ndarray) -> np.ndarray:
        """The head's own untuned rule (used where :attr:`cuts_scores` is false)."""
        return cut(self.scores(outputs), DEFAULT_THRESHOLDS)

    def plain_grades(self, outputs: np.ndarray) -> np.ndarray:
        """Untuned grades: the score cut at the default thresholds, or the head's own rule."""
        outputs = self.check(outputs)
        return cut(self.scores(outputs), DEFAULT_THRESHOLDS) if self.cuts_scores else self.own_grades(outputs)

    def grade_probabilities(self, outputs: np.ndarray) -> np.ndarray | None:
        """The per-grade probabilities among the served outputs (n x 5), or None for a head that serves none."""
        return None

    def valid_outputs(self, outputs: np.ndarray) -> np.ndarray:
        """Per image, whether its outputs are a grader's: finite, the score within 0-4 and any grade probabilities
        within 0-1 (what ``pseudo_labels`` accepts from another experiment's test outputs)."""
        outputs = self.check(outputs)
        finite = np.isfinite(outputs).all(1)
        safe = np.where(finite[:, None], outputs, 0.0)
        scores = self.scores(safe)
        ok = finite & (scores >= 0) & (scores <= len(GRADES) - 1)
        probabilities = self.grade_probabilities(safe)
        if probabilities is not None:
            ok &= ((probabilities >= -1e-6) & (probabilities <= 1 + 1e-6)).all(1)
        return ok

    def confidence(self, outputs: np.ndarray) -> np.ndarray:
        """How sure the head is of its plain grade, 0 (a coin toss) to 1: what ``pseudo_confidence`` compares."""
        scores = self.scores(outputs)
        return np.clip(1 - 2 * np.abs(scores - np.clip(np.rint(scores), 0, len(GRADES) - 1)), 0, 1)

    def check(self, outputs) -> np.ndarray:
        """``outputs`` as an n x len(columns) float array, or a ValueError saying what was given."""
        outputs = np.asarray(outputs, float)
        if outputs.ndim == 1 and len(self.columns) == 1:
            outputs = outputs.reshape(-1, 1)
        if outputs.ndim != 2 or outputs.shape[1] != len(self.columns):
            raise ValueError(f"the {self.name} head serves {len(self.columns)} outputs per image "
                             f"({', '.join(self.columns)}), got an array of shape {outputs.shape}")
        return outputs

    def frame_columns(self, outputs: np.ndarray) -> dict[str, np.ndarray]:
        """The served outputs as named columns, for a table."""
        outputs = self.check(outputs)
        return {c: outputs[:, i] for i, c in enumerate(self.columns)}

    def outputs_of(self, table) -> np.ndarray:
        """The served outputs read back from a table with :attr:`columns` (``oof.csv``, ``test_outputs.csv``)."""
        missing = [c for c in self.columns if c not in table]
        if missing:
            raise UserError(f"a {self.name} head's table needs the columns {', '.join(self.columns)}; "
                            f"{', '.join(missing)} missing (made by another head? train it again)")
        return table[list(self.columns)].to_numpy(float)

    # ------------------------------------------------------------------------------------- torch side
    def activate(self, raw):
        """The network's raw outputs (a torch tensor, n x :attr:`n_out`) as served outputs; exportable to ONNX."""
        raise NotImplementedError

    def loss(self, regression_loss: str, weights: np.ndarray | None):
        """The training loss: a picklable callable ``(raw outputs, targets) → scalar`` (fastai pickles it with the
        learner). ``weights`` are per-grade weights (``balance=loss``), applied by each target's nearest grade."""
        raise NotImplementedError

    def explain_target(self, grade: int):
        """What Grad-CAM explains for one image: a callable from its raw outputs (1-D tensor) to one number."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<head {self.name}>"


def register(cls: type[Head]) -> type[Head]:
    """Class decorator: add a head to :data:`HEADS` under its ``name``."""
    head = cls()
    if not head.name or head.name in HEADS:
        raise ValueError(f"head {cls.__name__}: a unique name is needed, got '{head.name}'")
    if len(head.columns) == 0:
        raise ValueError(f"head {head.name}: no output columns")
    HEADS[head.name] = head
    return cls


def get_head(name: str | Head) -> Head:
    """A head by its config name (a head given is itself), or one line naming the known ones."""
    if isinstance(name, Head):
        return name
    try:
        return HEADS[name]
    except KeyError:
        raise UserError(f"unknown head '{name}': use one of {', '.join(HEADS)}") from None


def head_of_columns(columns) -> Head:
    """The head whose served outputs are exactly the given output columns (an ``id`` column aside)."""
    named = {c for c in columns if c != "id"}
    for head in HEADS.values():
        if set(head.columns) == named:
            return head
    raise UserError(f"outputs with columns {', '.join(sorted(named))} match no head ({', '.join(HEADS)})")


def sample_weights(weights, targets):
    """Each sample's weight from per-grade ``weights`` (a torch tensor) by its target's nearest grade."""
    index = targets.float().round().clamp(0, len(weights) - 1).long()
    return weights.to(targets.device)[index]


def as_weights(weights):
    """Per-grade weights as a float32 torch tensor (all ones where none are given)."""
    import torch

    return torch.as_tensor(np.ones(len(GRADES)) if weights is None else weights, dtype=torch.float32)
