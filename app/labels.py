"""Class ids in the model's output order, shared by training and serving."""

CLASS_IDS: tuple[str, ...] = ("benign", "early_pre_b", "pre_b", "pro_b")

CLASS_NAMES: dict[str, str] = {
    "benign": "Benign (haematogones)",
    "early_pre_b": "Early pre-B ALL",
    "pre_b": "Pre-B ALL",
    "pro_b": "Pro-B ALL",
}
