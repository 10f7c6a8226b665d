"""Image-folder trees, ``data=imagefolder``: the class folders, the checks that name what to fix,
and their data module, over ``root/{train,val,test}`` or over a split of a flat folder of class
folders."""

import json
from pathlib import Path
from typing import Any

from torchvision.datasets.folder import IMG_EXTENSIONS

from src.data.images import SPLITS, ImageSet, class_folders
from src.data.splits import SplitDataModule, class_of, image_sets
from src.utils import ConfigError, MissingFileError
from src.utils.io import atomic_write


def is_flat(root: Path) -> bool:
    """A folder of class folders, split by the data module; train/, val/ or test/ in it mark a
    tree split by hand."""
    return not any((root / split).is_dir() for split in SPLITS)


def check_image_folder(root: str | Path) -> list[str]:
    """Validate ``root/<class>/<images>`` or ``root/{train,val[,test]}/<class>/<images>`` and
    return the class names, with an error that says what to change for each way a tree can be
    wrong."""
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(
            f"Data root '{root}' does not exist. Point data.root at a folder with one folder of "
            "images per class (or with train/ and val/ sub-folders that each hold them), or use "
            "the built-in data set with data=micrographs."
        )
    if is_flat(root):
        classes = class_folders(root)
        if not classes:
            raise MissingFileError(
                f"Data root '{root}' has no class folders: it needs one folder of images per "
                "class, or train/ and val/ (and optionally test/) sub-folders that each hold them."
            )
        check_has_images([root / name for name in classes])
        return classes
    splits = [s for s in SPLITS if (root / s).is_dir()]
    missing = {"train", "val"} - set(splits)
    if missing:
        raise MissingFileError(
            f"Data root '{root}' has no {' or '.join(sorted(missing))}/ folder: it needs train/ "
            "and val/ (and optionally test/), each with one folder of images per class."
        )
    classes = class_folders(root / "train")
    if not classes:
        raise MissingFileError(f"'{root / 'train'}' has no class folders.")
    for split in splits[1:]:
        other = class_folders(root / split)
        if other != classes:
            only_train = sorted(set(classes) - set(other))
            only_other = sorted(set(other) - set(classes))
            raise ConfigError(
                f"Class folders differ between '{root / 'train'}' and '{root / split}': "
                f"only in train: {only_train}; only in {split}: {only_other}. "
                "Every split needs the same class folders."
            )
    folders = [root / split / name for split in splits for name in classes]
    check_has_images(folders, " from every split")
    return classes


def check_has_images(folders: list[Path], where: str = "") -> None:
    for folder in folders:
        if not any(p.suffix.lower() in IMG_EXTENSIONS for p in folder.iterdir()):
            raise MissingFileError(
                f"Class folder '{folder}' has no images ({', '.join(IMG_EXTENSIONS)}). "
                f"Add images or remove the folder{where}."
            )


def write_class_indices(classes: list[str], path: str | Path) -> Path:
    """``{"0": "10.0", ...}``: label index to class name, the file prediction scripts expect."""
    return atomic_write(path, json.dumps(dict(enumerate(classes)), indent=2))


class ImageFolderDataModule(SplitDataModule):
    """Train/val/test loaders over ``root/{train,val,test}``, or over a split of a flat folder of
    class folders (``val_fraction`` and ``test_fraction`` of each class, shuffled by
    ``split_seed``: ``SeededSplit``); test falls back to val. Every other key is the base's
    (``src/data/datamodule.py``)."""

    may_change = (*SplitDataModule.may_change, "root")

    def __init__(self, root: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(logger=False)
        self.source = self.root = Path(root)
        self._image_sets: dict[str, ImageSet] | None = None

    @property
    def classes(self) -> list[str]:
        return check_image_folder(self.root)

    def split_folders(self) -> dict[str, Path]:
        """The folder each stage reads: test falls back to val."""
        test = "test" if (self.root / "test").is_dir() else "val"
        return {"train": self.root / "train", "val": self.root / "val", "test": self.root / test}

    def split_images(self) -> dict[str, ImageSet]:
        """The images each stage reads, in either layout (test falls back to val), listed once."""
        if self._image_sets is None:
            classes = check_image_folder(self.root)
            if is_flat(self.root):
                files = ImageSet.of_folder(self.root).relative_paths()
                class_of_file = {path: class_of(path) for path in files}
                split = self.split.of(class_of_file)
                self._image_sets = image_sets(
                    self.root.name, self.root, classes, split, class_of_file
                )
            else:
                folders = self.split_folders()
                listed = {folder: ImageSet.of_folder(folder) for folder in set(folders.values())}
                self._image_sets = {split: listed[folder] for split, folder in folders.items()}
        return self._image_sets
