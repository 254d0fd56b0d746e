"""Plane geometry of word regions in image coordinates (x right, y down): perspective coefficients,
convexity, minimum-area rectangles and the quadrilateral a word is rectified from."""
from typing import List

import numpy as np


def perspective_coefficients(src: np.ndarray, dst: np.ndarray) -> List[float]:
    """PIL PERSPECTIVE coefficients that map output points `dst` (4, 2) back to input points `src`."""
    rows = []
    for (x, y), (u, v) in zip(dst, src):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return np.linalg.solve(np.array(rows, dtype=np.float64), src.reshape(8).astype(np.float64)).tolist()


def signed_area(points: np.ndarray) -> float:
    """Shoelace area of a polygon: positive when its points run clockwise on screen (y down)."""
    x, y = points[:, 0], points[:, 1]
    return float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)) / 2


def is_convex(points: np.ndarray) -> bool:
    """Whether the polygon's points run around a strictly convex shape (no self-intersection, no dent)."""
    edges = np.roll(points, -1, axis=0) - points
    turns = edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1] - edges[:, 1] * np.roll(edges, -1, axis=0)[:, 0]
    return bool(np.all(turns > 0) or np.all(turns < 0))


def convex_hull(points: np.ndarray) -> np.ndarray:
    """The convex hull's vertices (Andrew's monotone chain), without repeated or collinear points."""
    unique = sorted(set(map(tuple, points.tolist())))
    if len(unique) < 3:
        return np.array(unique, dtype=np.float64).reshape(-1, 2)

    def chain(ordered: List[tuple]) -> List[tuple]:
        out: List[tuple] = []
        for p in ordered:
            while len(out) >= 2 and ((out[-1][0] - out[-2][0]) * (p[1] - out[-2][1])
                                     - (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0])) <= 0:
                out.pop()
            out.append(p)
        return out[:-1]

    return np.array(chain(unique) + chain(unique[::-1]), dtype=np.float64)


def min_area_rect(points: np.ndarray) -> np.ndarray:
    """Corners (4, 2) of the smallest rectangle holding the points, clockwise on screen. One of its sides lies
    along a convex hull edge, so only those directions are tried."""
    hull = convex_hull(points)
    if len(hull) < 3:
        raise ValueError("fewer than three distinct non-collinear points")
    best = None
    for edge in np.roll(hull, -1, axis=0) - hull:
        u = edge / np.linalg.norm(edge)
        v = np.array([-u[1], u[0]])
        a, b = hull @ u, hull @ v
        area = (a.max() - a.min()) * (b.max() - b.min())
        if best is None or area < best[0]:
            best = area, u, v, (a.min(), a.max(), b.min(), b.max())
    _, u, v, (a0, a1, b0, b1) = best
    corners = np.array([a0 * u + b0 * v, a1 * u + b0 * v, a1 * u + b1 * v, a0 * u + b1 * v])
    return corners if signed_area(corners) > 0 else corners[::-1]


def word_quad(points: np.ndarray) -> np.ndarray:
    """The quadrilateral (4, 2) a word region is rectified from, clockwise on screen from the text's top-left.

    A convex quadrilateral keeps its corners, its first point taken as the text's top-left (the ICDAR 2015
    convention the other datasets share); one given counter-clockwise is reversed around that point, so that
    the crop is never mirrored. Any other polygon (curved text, a dented or self-crossing quadrilateral)
    becomes its minimum-area rectangle, whose corner nearest the polygon's first point is the top-left."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(points) == 4 and is_convex(points):
        quad = points
    else:
        quad = min_area_rect(points)
        quad = np.roll(quad, -int(np.argmin(((quad - points[0]) ** 2).sum(axis=1))), axis=0)
    return quad if signed_area(quad) > 0 else quad[[0, 3, 2, 1]]
