"""Label assignment: OneNet's minimum-cost one-to-one matcher, and a one-to-many assignment for the auxiliary branch.

OneNet (Sun et al., "What Makes for End-to-End Object Detection?", PeizeSun/OneNet `onenet/loss.py`): the
matching cost includes the classification cost, so the location that is both well placed *and* already scores
the class best becomes the single positive; every other location learns background. That is what lets the
head be decoded without NMS.

Both assignments work on padded targets `[B, M]` with a `valid` mask and are computed for the whole batch in
one go; images without boxes simply have no valid column.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from onedet.boxes import elementwise_generalized_box_iou, normalize_xyxy
from onedet.config import LOSS_WEIGHTS


class MinCostMatcher:
    """Costs between predictions and targets, and the assignments derived from them.

    Args:
        cost_class: weight of the focal classification cost (default: the `focal` loss weight, OneNet's 2).
        cost_bbox: weight of the L1 distance of boxes normalised by the image size (the `l1` weight, 5).
        cost_giou: weight of the negative GIoU (the `giou` weight, 2).
        focal_alpha, focal_gamma: the focal cost's parameters, the same as the focal loss's.
        aux_topk: positives per ground-truth box in the one-to-many assignment (TAL / YOLOv10 use 10-13).
    """

    def __init__(
        self,
        cost_class: float = LOSS_WEIGHTS["focal"],
        cost_bbox: float = LOSS_WEIGHTS["l1"],
        cost_giou: float = LOSS_WEIGHTS["giou"],
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        aux_topk: int = 10,
    ) -> None:
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.aux_topk = aux_topk

    @torch.no_grad()
    def cost(
        self,
        logits: Tensor,
        pred_boxes_xyxy: Tensor,
        gt_boxes_xyxy: Tensor,
        gt_labels: Tensor,
        image_size: tuple[int, int],
    ) -> Tensor:
        """Matching cost `[B, N, M]` between predictions (`[B, N, C]`, `[B, N, 4]`) and targets (`[B, M, 4]`, `[B, M]`).

        Padded target columns get a cost too (computed on label 0); callers mask them with `valid`.
        """
        b, n, _ = logits.shape
        m = gt_labels.shape[1]
        prob = logits.float().sigmoid()
        # The focal cost is the focal loss of calling this location positive for the target's class minus that
        # of calling it negative: only the target's class column differs between the two hypotheses.
        index = gt_labels.clamp(min=0)[:, None, :].expand(b, n, m)
        p = prob.gather(2, index)  # (B, N, M)
        a, g = self.focal_alpha, self.focal_gamma
        neg = (1 - a) * p.pow(g) * -(1 - p + 1e-8).log()
        pos = a * (1 - p).pow(g) * -(p + 1e-8).log()
        cost_class = pos - neg

        pred_n = normalize_xyxy(pred_boxes_xyxy.float(), image_size)
        gt_n = normalize_xyxy(gt_boxes_xyxy.float(), image_size)
        cost_bbox = torch.cdist(pred_n, gt_n, p=1)  # (B, N, M)
        giou = elementwise_generalized_box_iou(pred_boxes_xyxy.float()[:, :, None], gt_boxes_xyxy.float()[:, None])
        return self.cost_class * cost_class + self.cost_bbox * cost_bbox - self.cost_giou * giou

    @torch.no_grad()
    def match(
        self,
        logits: Tensor,
        pred_boxes_xyxy: Tensor,
        gt_boxes_xyxy: Tensor,
        gt_labels: Tensor,
        valid: Tensor,
        image_size: tuple[int, int],
    ) -> Tensor:
        """One-to-one: the location index `[B, M]` (int64) assigned to each target, -1 for padding.

        Each target takes the location of minimum cost over all locations and levels (OneNet's argmin).
        OneNet leaves it there, so two targets can share a location; here distinct targets always get
        distinct locations: when argmins collide, the image is solved exactly with the Hungarian algorithm
        on the union of each target's `n_valid` cheapest locations (enough candidates for a perfect matching
        to exist, by Hall's theorem). Without a collision the argmin *is* the Hungarian optimum, so the
        result equals OneNet's whenever OneNet's is one-to-one.
        """
        cost = self.cost(logits, pred_boxes_xyxy, gt_boxes_xyxy, gt_labels, image_size)
        return self.match_cost(cost, valid)

    @staticmethod
    def match_cost(cost: Tensor, valid: Tensor) -> Tensor:
        """`match` given the cost `[B, N, M]` already: location index per target `[B, M]`, -1 for padding."""
        n = cost.shape[1]
        if valid.any() and int(valid.sum(1).max()) > n:
            raise ValueError(f"{int(valid.sum(1).max())} targets in one image but only {n} locations to assign")
        index = cost.argmin(1).masked_fill(~valid, -1)  # (B, M)
        for b in range(cost.shape[0]):
            locations = index[b][valid[b]]
            if locations.numel() == locations.unique().numel():
                continue
            # Rare (two boxes whose best location is the same one): worth a trip to the CPU for an exact answer.
            cols = valid[b].nonzero().squeeze(1)
            cost_b = cost[b][:, cols]  # (N, n_valid)
            candidates = cost_b.topk(len(cols), dim=0, largest=False).indices.unique()
            sub = cost_b[candidates].T.double().cpu().numpy()  # (n_valid, U)
            rows, picked = linear_sum_assignment(sub)
            index[b, cols[torch.from_numpy(rows).to(cols.device)]] = candidates[
                torch.from_numpy(np.asarray(picked)).to(candidates.device)
            ]
        return index

    @torch.no_grad()
    def match_one_to_many(
        self,
        logits: Tensor,
        pred_boxes_xyxy: Tensor,
        points: Tensor,
        gt_boxes_xyxy: Tensor,
        gt_labels: Tensor,
        valid: Tensor,
        image_size: tuple[int, int],
    ) -> Tensor:
        """One-to-many (auxiliary branch): the target index `[B, N]` of each location, -1 for background.

        TAL / YOLOv10 style: each target takes its `aux_topk` cheapest locations among those whose centre
        `points [N, 2]` lies inside its box (the same cost as the one-to-one matcher, so the two branches agree
        on what "good" means and the one-to-one branch gets a consistent signal through the shared features).
        A target too small to contain any point takes its cheapest location anywhere, so none is left
        unsupervised. A location claimed by several targets keeps the one it costs least (an orphan first).
        """
        cost = self.cost(logits, pred_boxes_xyxy, gt_boxes_xyxy, gt_labels, image_size)  # (B, N, M)
        b, n, m = cost.shape
        if m == 0:
            return torch.full((b, n), -1, dtype=torch.long, device=cost.device)
        x = points[:, 0].float()[None, :, None]
        y = points[:, 1].float()[None, :, None]
        gt = gt_boxes_xyxy.float()[:, None]  # (B, 1, M, 4)
        inside = (x > gt[..., 0]) & (x < gt[..., 2]) & (y > gt[..., 1]) & (y < gt[..., 3])
        inside &= valid[:, None, :]
        inf = torch.finfo(cost.dtype).max
        masked = cost.masked_fill(~inside, inf)
        k = min(self.aux_topk, n)
        top_cost, top_index = masked.topk(k, dim=1, largest=False)  # (B, k, M)
        selected = torch.zeros_like(inside)
        selected.scatter_(1, top_index, top_cost < inf)
        # Targets with no point inside: their single cheapest location anywhere.
        orphan = valid & ~selected.any(1)  # (B, M)
        best = cost.argmin(1, keepdim=True)  # (B, 1, M)
        selected.scatter_(1, best, selected.gather(1, best) | orphan[:, None, :])
        claim = cost.masked_fill(~selected, inf)
        # An orphan keeps its one location even where another target is cheaper: that target has others.
        orphan_at = torch.zeros_like(selected).scatter_(1, best, orphan[:, None, :])
        claim = claim.masked_fill(orphan_at, -inf)
        best_cost, best_target = claim.min(2)  # (B, N)
        return best_target.masked_fill(best_cost >= inf, -1)
