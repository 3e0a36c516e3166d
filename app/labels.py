"""Class ids in the model's output order, and the folder names that hold each class, shared by
training and serving."""

CLASS_IDS: tuple[str, ...] = ("benign", "early_pre_b", "pre_b", "pro_b")

CLASS_NAMES: dict[str, str] = {
    "benign": "Benign (haematogones)",
    "early_pre_b": "Early pre-B ALL",
    "pre_b": "Pre-B ALL",
    "pro_b": "Pro-B ALL",
}

# Folder names (case-insensitive) accepted for each class id: the dataset's own and ours.
CLASS_FOLDERS: dict[str, str] = {
    "benign": "benign",
    "early": "early_pre_b",
    "pre": "pre_b",
    "pro": "pro_b",
    **{class_id: class_id for class_id in CLASS_IDS},
}


def class_of_folder(name: str) -> str | None:
    """The class id a folder of images holds, by its name; None for any other folder."""
    return CLASS_FOLDERS.get(name.lower())
