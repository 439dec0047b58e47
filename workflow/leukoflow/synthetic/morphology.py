"""Appearance table of the synthetic smears: one row of data per white-cell class (docs/method.md §1.2).

The synthetic generator (`leukoflow.synthetic`) draws every white cell from the row of its class
code, so what makes a class learnable, and which classes are confusable, is visible here and
nowhere else. Counts, median box sizes and multi-box shares are the **[computed]** columns of
docs/method.md §1.2 (raw challenge train.csv, 52,748 boxes). The morphology columns paraphrase the
textbook May-Grünwald-Giemsa appearance of each cell type (nucleus shape, nucleus-to-cytoplasm
ratio, chromatin density, nucleoli, cytoplasm colour, granules). Ranges of neighbouring classes
overlap on purpose: LY/LLC/LM, MBL/B/MoB and M/MM/PM differ in tendencies, not in one feature.

Colours are RGB as the stain would look at full density on a white background; the renderer
converts them to optical densities (-ln(rgb/255)), which add where objects overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

from leukoflow.constants import CLASSES


@dataclass(frozen=True)
class GranuleStyle:
    """How one kind of cytoplasmic granule is drawn."""

    rgb: tuple[int, int, int]
    sigma: float  # px, Gaussian radius of one granule
    amplitude: float  # peak optical-density scale of one granule
    over_nucleus: bool  # basophil granules sit on top of the nucleus too
    central: bool  # platelet granules crowd in the centre (granulomere)


GRANULE_STYLES: dict[str, GranuleStyle] = {
    "none": GranuleStyle((255, 255, 255), 1.0, 0.0, False, False),
    "fine": GranuleStyle((190, 140, 195), 0.7, 0.55, False, False),  # neutrophilic, lilac dust
    "azure": GranuleStyle((140, 45, 120), 1.1, 0.9, False, False),  # azurophilic, red-purple
    "orange": GranuleStyle((235, 125, 55), 1.6, 0.85, False, False),  # eosinophilic, large, packed
    "purple": GranuleStyle((55, 20, 85), 2.1, 1.1, True, False),  # basophilic, dark, coarse
    "platelet": GranuleStyle((125, 60, 155), 1.0, 0.9, False, True),
}

# Nucleus shapes the renderer knows (see synthetic.cells._nucleus_mask).
NUCLEUS_SHAPES = ("round", "kidney", "band", "lobed", "cleaved", "convoluted", "smudge", "none")
# Chromatin textures: contrast of the texture on the nucleus density, and which noise field.
CHROMATIN_TEXTURES = {"fine": ("fine", 0.22), "clumped": ("clumped", 0.38), "dense": ("fine", 0.12),
                      "smudged": ("streak", 0.45)}


@dataclass(frozen=True)
class Morphology:
    """Appearance of one class. Ranges are (low, high) of a uniform draw per cell."""

    code: str
    train_boxes: int  # docs/method.md §1.2 "train boxes"
    median_wh: tuple[int, int]  # docs/method.md §1.2 median box w x h, px
    multi_box_share: float  # docs/method.md §1.2 share of the class's boxes that lie in multi-box images
    nucleus_shapes: dict[str, float]  # shape -> probability
    lobes: tuple[int, int]  # for "lobed"
    nc_ratio: tuple[float, float]  # nucleus area / cell area
    nucleus_offset: tuple[float, float]  # shift of the nucleus centre, fraction of the free radius
    chromatin: tuple[float, float]  # nucleus optical-density scale (1 = the smear's nucleus colour)
    chromatin_texture: str  # key of CHROMATIN_TEXTURES
    nucleoli: tuple[int, int]
    cytoplasm_rgb: tuple[int, int, int]
    cytoplasm_density: tuple[float, float]
    granules: str  # key of GRANULE_STYLES
    granule_density: tuple[float, float]  # granules per 1000 px² of cell area
    auer_rods: tuple[int, int]
    vacuoles: tuple[int, int]
    roughness: float  # radial irregularity of the cell outline (0 smooth, 0.3 ragged)
    large_image_probability: float  # chance that an image of this class is a 512/608 px one


def _m(code, boxes, wh, multi, shapes, lobes, nc, offset, chromatin, texture, nucleoli, rgb, density,
       granules, granule_density, auer, vacuoles, roughness, large) -> Morphology:
    return Morphology(code, boxes, wh, multi, shapes, lobes, nc, offset, chromatin, texture, nucleoli,
                      rgb, density, granules, granule_density, auer, vacuoles, roughness, large)


# code, train boxes, median wh, multi-box share | nucleus shape(s), lobes, N:C, offset, chromatin,
# texture, nucleoli | cytoplasm rgb, density, granules, granule density, Auer rods, vacuoles,
# outline roughness, large-image probability
_TABLE = (
    _m("PNN", 6827, (146, 152), 0.074, {"lobed": 0.8, "band": 0.2}, (3, 5), (0.22, 0.34), (0.0, 0.15),
       (0.85, 1.05), "clumped", (0, 0), (226, 204, 216), (0.35, 0.55), "fine", (22, 34), (0, 0), (0, 0), 0.03, 0.02),
    _m("LY", 2092, (112, 115), 0.112, {"round": 0.85, "kidney": 0.1, "cleaved": 0.05}, (1, 1), (0.62, 0.8),
       (0.05, 0.35), (0.85, 1.05), "clumped", (0, 0), (168, 196, 232), (0.45, 0.7), "none", (0, 0), (0, 0), (0, 0),
       0.03, 0.01),
    _m("MO", 2743, (176, 185), 0.058, {"kidney": 0.5, "convoluted": 0.2, "round": 0.15, "band": 0.15}, (1, 1),
       (0.35, 0.52), (0.1, 0.4), (0.55, 0.72), "fine", (0, 0), (196, 190, 218), (0.45, 0.7), "fine", (5, 10),
       (0, 0), (0, 5), 0.08, 0.03),
    _m("EO", 2432, (158, 159), 0.08, {"lobed": 0.85, "band": 0.15}, (2, 2), (0.22, 0.34), (0.0, 0.2),
       (0.75, 0.92), "clumped", (0, 0), (232, 212, 205), (0.25, 0.4), "orange", (16, 24), (0, 0), (0, 0), 0.03, 0.02),
    _m("BA", 1001, (138, 140), 0.031, {"lobed": 0.6, "round": 0.25, "kidney": 0.15}, (2, 3), (0.28, 0.45),
       (0.0, 0.2), (0.6, 0.8), "clumped", (0, 0), (214, 198, 222), (0.3, 0.5), "purple", (4, 7), (0, 0), (0, 0),
       0.05, 0.02),
    _m("Er", 2308, (98, 102), 0.065, {"round": 1.0}, (1, 1), (0.28, 0.48), (0.0, 0.35), (1.1, 1.35), "dense",
       (0, 0), (198, 178, 204), (0.55, 0.85), "none", (0, 0), (0, 0), (0, 0), 0.02, 0.02),
    _m("PM", 1152, (173, 173), 0.056, {"round": 0.7, "kidney": 0.3}, (1, 1), (0.42, 0.58), (0.2, 0.45),
       (0.55, 0.72), "fine", (0, 2), (178, 182, 226), (0.5, 0.75), "azure", (5, 10), (0, 0), (0, 2), 0.04, 0.03),
    _m("Thromb", 2319, (80, 80), 0.063, {"none": 1.0}, (1, 1), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0), "fine",
       (0, 0), (205, 188, 226), (0.4, 0.65), "platelet", (12, 22), (0, 0), (0, 0), 0.18, 0.02),
    _m("LAM3", 3338, (151, 156), 0.123, {"kidney": 0.35, "lobed": 0.3, "round": 0.2, "cleaved": 0.15}, (2, 2),
       (0.38, 0.55), (0.05, 0.3), (0.55, 0.72), "fine", (0, 2), (198, 178, 214), (0.5, 0.7), "azure", (14, 24),
       (1, 4), (0, 0), 0.05, 0.03),
    _m("Lysee", 3408, (170, 171), 0.141, {"smudge": 1.0}, (1, 1), (0.75, 0.95), (0.0, 0.1), (0.3, 0.55),
       "smudged", (0, 0), (210, 200, 225), (0.0, 0.15), "none", (0, 0), (0, 0), (0, 0), 0.28, 0.85),
    _m("LyB", 3029, (120, 124), 0.201, {"round": 0.75, "cleaved": 0.15, "kidney": 0.1}, (1, 1), (0.75, 0.9),
       (0.0, 0.3), (0.55, 0.7), "fine", (0, 2), (165, 184, 230), (0.5, 0.72), "none", (0, 0), (0, 0), (0, 0),
       0.04, 0.02),
    _m("LLC", 3158, (111, 112), 0.347, {"round": 0.9, "kidney": 0.1}, (1, 1), (0.72, 0.88), (0.05, 0.35),
       (0.92, 1.12), "clumped", (0, 0), (184, 204, 232), (0.35, 0.55), "none", (0, 0), (0, 0), (0, 0), 0.03, 0.01),
    _m("MBL", 2668, (156, 160), 0.151, {"round": 0.8, "kidney": 0.15, "cleaved": 0.05}, (1, 1), (0.65, 0.82),
       (0.05, 0.3), (0.5, 0.66), "fine", (1, 3), (160, 176, 226), (0.55, 0.75), "azure", (0, 1.5), (0, 1), (0, 0),
       0.04, 0.03),
    _m("LGL", 2439, (138, 145), 0.043, {"round": 0.6, "kidney": 0.4}, (1, 1), (0.4, 0.56), (0.2, 0.45),
       (0.8, 0.98), "clumped", (0, 0), (190, 206, 232), (0.4, 0.6), "azure", (0.6, 1.3), (0, 0), (0, 0), 0.04, 0.01),
    _m("B", 2263, (139, 141), 0.198, {"round": 0.8, "kidney": 0.1, "cleaved": 0.1}, (1, 1), (0.7, 0.86),
       (0.05, 0.3), (0.52, 0.68), "fine", (1, 3), (164, 180, 228), (0.55, 0.75), "none", (0, 0), (0, 0), (0, 0),
       0.04, 0.02),
    _m("M", 1994, (152, 152), 0.064, {"round": 0.6, "kidney": 0.4}, (1, 1), (0.38, 0.54), (0.15, 0.4),
       (0.7, 0.88), "clumped", (0, 0), (212, 198, 218), (0.45, 0.65), "fine", (14, 26), (0, 0), (0, 0), 0.04, 0.02),
    _m("MM", 1707, (150, 150), 0.062, {"kidney": 0.7, "band": 0.15, "round": 0.15}, (1, 1), (0.32, 0.48),
       (0.1, 0.35), (0.75, 0.92), "clumped", (0, 0), (220, 204, 216), (0.4, 0.6), "fine", (18, 30), (0, 0), (0, 0),
       0.04, 0.02),
    _m("LF", 2131, (92, 91), 0.537, {"cleaved": 0.7, "round": 0.3}, (1, 1), (0.78, 0.92), (0.0, 0.25),
       (0.85, 1.02), "clumped", (0, 1), (176, 196, 232), (0.45, 0.65), "none", (0, 0), (0, 0), (0, 0), 0.04, 0.01),
    _m("MoB", 1531, (183, 191), 0.393, {"round": 0.55, "kidney": 0.3, "convoluted": 0.15}, (1, 1), (0.52, 0.72),
       (0.05, 0.35), (0.45, 0.62), "fine", (1, 3), (172, 176, 222), (0.5, 0.72), "fine", (0, 5), (0, 0), (0, 3),
       0.07, 0.04),
    _m("LH_lyAct", 1705, (158, 164), 0.043, {"round": 0.75, "kidney": 0.25}, (1, 1), (0.4, 0.58), (0.15, 0.4),
       (0.7, 0.88), "clumped", (0, 1), (118, 140, 212), (0.65, 0.9), "none", (0, 0), (0, 0), (0, 2), 0.12, 0.02),
    _m("LM", 944, (126, 127), 0.225, {"round": 0.45, "cleaved": 0.35, "kidney": 0.2}, (1, 1), (0.72, 0.88),
       (0.05, 0.3), (0.78, 0.95), "clumped", (0, 1), (176, 196, 232), (0.45, 0.65), "none", (0, 0), (0, 0), (0, 0),
       0.05, 0.01),
    _m("LZMG", 845, (127, 138), 0.181, {"round": 0.7, "kidney": 0.3}, (1, 1), (0.52, 0.7), (0.15, 0.4),
       (0.82, 0.98), "clumped", (0, 0), (186, 202, 232), (0.4, 0.6), "none", (0, 0), (0, 0), (0, 0), 0.15, 0.01),
    _m("SS", 714, (119, 128), 0.021, {"convoluted": 0.8, "round": 0.2}, (1, 1), (0.72, 0.86), (0.0, 0.25),
       (0.9, 1.05), "clumped", (0, 0), (182, 198, 232), (0.35, 0.55), "none", (0, 0), (0, 0), (0, 0), 0.05, 0.01),
)

MORPHOLOGY: dict[str, Morphology] = {row.code: row for row in _TABLE}

# Classes a careless annotator mixes up; the `wrong_label` defect prefers these partners.
CONFUSABLE: dict[str, tuple[str, ...]] = {
    "LY": ("LLC", "LM", "LZMG"), "LLC": ("LY", "LM", "LF"), "LM": ("LY", "LLC"), "LF": ("LLC", "LM"),
    "MBL": ("B", "MoB", "LyB"), "B": ("MBL", "MoB", "LyB"), "MoB": ("MBL", "B", "MO"), "LyB": ("B", "MBL"),
    "M": ("MM", "PM"), "MM": ("M", "PNN"), "PM": ("M", "LAM3"), "PNN": ("MM", "EO"), "MO": ("MoB", "LH_lyAct"),
    "LGL": ("LY", "LH_lyAct"), "LH_lyAct": ("LY", "LGL"), "LAM3": ("PM", "MBL"), "SS": ("LLC", "LY"),
    "LZMG": ("LY", "LLC"), "EO": ("PNN",), "BA": ("EO",), "Er": ("LY",), "Thromb": ("Lysee",), "Lysee": ("B",),
}


@dataclass(frozen=True)
class SmearStyle:
    """Per-smear look: base colours and how much one image's staining may drift from them."""

    background_rgb: tuple[int, int, int] = (236, 224, 226)  # pale pinkish CellaVision background
    background_jitter: float = 6.0  # px value, per channel
    red_cell_rgb: tuple[int, int, int] = (236, 178, 178)  # red cell rim at full density
    red_cell_radius: tuple[float, float] = (31.0, 41.0)  # px; a neutrophil box is ~146 px, docs/method.md §1.2
    red_cell_coverage: tuple[float, float] = (0.3, 0.95)  # red-cell area / image area
    red_cell_pallor: tuple[float, float] = (0.45, 0.8)  # relative density lost in the centre
    red_cell_clustering: float = 1.0  # 0 uniform; 1 red cells follow a slow smear-thickness field
    red_cell_under_white_cell: float = 0.08  # chance a red cell may lie under a white cell
    nucleus_rgb: tuple[int, int, int] = (78, 42, 128)  # dense purple chromatin
    stain_jitter: float = 0.07  # log-scale jitter of every optical density, per image and channel
    stain_strength: tuple[float, float] = (0.85, 1.15)  # global stain intensity per image
    illumination: float = 0.025  # amplitude of the slow background illumination field (optical density)
    # std of a lone cell's offset from the image centre, fraction of the width; also keeps the
    # pHashes of distinct images apart (measured: 0.05 -> 5, 0.08 -> 4 pairs <= 12 bits in 300 images)
    centre_jitter: float = 0.08
    sensor_noise: float = 2.2  # px value std of the additive noise
    cell_size_jitter: float = 0.14  # log-scale std of a cell's size around its class median
    box_margin: tuple[float, float] = (0.0, 6.0)  # px the annotator's box leaves around the cell
    edge_blur: float = 1.1  # px, Gaussian softening of every drawn outline


SMEAR_STYLE = SmearStyle()

# docs/method.md §1.3 [computed]: images by number of boxes (train.csv) and of rows (test.csv).
TRAIN_CELLS_PER_IMAGE: dict[int, int] = {1: 45283, 2: 2499, 3: 394, 4: 98, 5: 58, 6: 32, 7: 27, 8: 17, 9: 5,
                                         10: 3, 11: 1}
TEST_CELLS_PER_IMAGE: dict[int, int] = {1: 19373, 2: 1110, 3: 151, 4: 48, 5: 26, 6: 12, 7: 14, 8: 8, 9: 4,
                                        10: 4, 11: 1}
# docs/method.md §1.3: most images are ~350-390 px and near square, a few ~295 px, some 512 and 608 px;
# ~94 % fall in the smallest of five equal-width area bins. (side range, chance for a regular image)
IMAGE_SIDES: tuple[tuple[tuple[int, int], float], ...] = (((292, 300), 0.03), ((345, 392), 0.97))
LARGE_SIDES: tuple[tuple[int, float], ...] = ((512, 0.3), (608, 0.7))
IMAGE_ASPECT_JITTER: tuple[int, int] = (-3, 6)  # px, height - width of a regular image
# Distinct classes per image (docs/method.md §1.3: 1,104 of 3,134 multi-box images hold 2+ classes): chance
# that an extra cell of a multi-cell image takes another class than the first.
OTHER_CLASS_IN_MULTI_CELL_IMAGE = 0.28

assert tuple(MORPHOLOGY) == CLASSES, "the appearance table must list the classes in index order"
