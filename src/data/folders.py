"""Image-folder trees: the class folders, the checks that name what to fix, and the images of a
split as an ``ImageSet``, listed once by the one lister of ``src.data.images``."""

import json
from dataclasses import dataclass
from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS

from src.data.images import image_files
from src.utils import ConfigError, MissingFileError
from src.utils.io import atomic_write

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ImageSet:
    """The images of one split in label order, and the names its cache and statistics files
    take: a split folder (``root/train``) or a file list under a flat folder of classes."""

    name: str
    base: Path  # the files are keyed by their paths relative to it
    classes: list[str]
    samples: list[tuple[str, int]]

    @classmethod
    def of_folder(cls, split_dir: str | Path) -> "ImageSet":
        """A folder of class folders, labelled as ``ImageFolder`` labels it (sorted names)."""
        split_dir = Path(split_dir)
        classes = class_folders(split_dir)
        label = {name: i for i, name in enumerate(classes)}
        samples = [
            (str(path), label[parts[0]])
            for path in image_files(split_dir)
            if len(parts := path.relative_to(split_dir).parts) > 1 and parts[0] in label
        ]
        return cls(f"{split_dir.parent.name}-{split_dir.name}", split_dir, classes, samples)

    def relative_paths(self) -> list[str]:
        return [Path(path).relative_to(self.base).as_posix() for path, _ in self.samples]


def as_image_set(source: str | Path | ImageSet) -> ImageSet:
    return source if isinstance(source, ImageSet) else ImageSet.of_folder(source)


def class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


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
