"""Services and EndpointSlices from YAML/JSON files, for running without an API server.

Objects are returned as the API would give them (plain dicts); checking them is the core's job.
Only a file that cannot be read or parsed is an error here, so the caller can keep its last good state.

A directory is read the way the kubelet lays out a mounted ConfigMap: each file is a symlink
`name -> ..data/name`, `..data` a symlink to a hidden timestamped folder that an update replaces
whole (one rename of `..data`). Hidden entries (a leading dot) are passed over, and each file is
read once whatever number of names reach it: the tree was read twice (the folder and the links).
"""
import os
from pathlib import Path

import orjson
import yaml

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
SERVICE = ("v1", "Service")
ENDPOINT_SLICE = ("discovery.k8s.io/v1", "EndpointSlice")


class ManifestError(Exception):
    """A manifest file could not be read or parsed; the message names the file."""


def load_manifests(path) -> tuple[list[dict], list[dict]]:
    """(services, endpointslices) from a file, or from every manifest file below a directory."""
    services: list[dict] = []
    slices: list[dict] = []
    for file in manifest_files(path):
        for obj in _objects(_documents(file), file):
            type_ = (obj.get("apiVersion"), obj.get("kind"))
            if type_ == SERVICE:
                services.append(obj)
            elif type_ == ENDPOINT_SLICE:
                slices.append(obj)
    return services, slices


def fingerprint(path) -> tuple:
    """Changes when a manifest file is added, removed or rewritten, or a link is pointed at another
    file (the kubelet's swap: the same names, new files); costs one stat per file."""
    stats = []
    for file in manifest_files(path):
        try:
            stat = file.stat()
        except OSError:
            continue  # gone since the listing, or never there: load_manifests will say which
        stats.append((str(file), stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size))
    return tuple(stats)


def manifest_files(path) -> list[Path]:
    """`path` itself, or the manifest files below the directory `path` (hidden ones left out, symlinked
    folders not followed), sorted, each file once however many names reach it."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    errors: list[OSError] = []
    found: dict[str, Path] = {}   # real path -> the first name that reached it
    for folder, dirs, names in os.walk(path, onerror=errors.append):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            file = Path(folder, name)
            if name.startswith(".") or file.suffix.lower() not in MANIFEST_SUFFIXES or not file.is_file():
                continue
            found.setdefault(os.path.realpath(file), file)
    if errors:
        raise ManifestError(f"{path}: cannot list: {errors[0]}") from errors[0]
    return sorted(found.values())


def _documents(file: Path) -> list:
    try:
        text = file.read_text(encoding="utf-8")
        if file.suffix.lower() == ".json":
            try:
                # orjson is ~50x quicker than YAML parsing: what a large cluster's dump wants.
                return [orjson.loads(text)]
            except orjson.JSONDecodeError:
                pass   # JSON with YAML-only liberties (tabs, comments...): the YAML parser below
        return list(yaml.load_all(text, Loader=yaml.CSafeLoader))
    except (OSError, UnicodeDecodeError) as error:
        raise ManifestError(f"{file}: cannot read: {error}") from error
    except yaml.YAMLError as error:
        raise ManifestError(f"{file}: not valid YAML: {error}") from error


def _objects(documents: list, file: Path) -> list[dict]:
    """The documents' objects, `kind: List` expanded one level; empty and non-object documents left out."""
    objects = []
    for document in documents:
        if isinstance(document, dict) and document.get("kind") == "List":
            items = document.get("items") or []
            if not isinstance(items, list):
                raise ManifestError(f"{file}: the items of a List are not a list")
            objects.extend(items)
        else:
            objects.append(document)
    return [obj for obj in objects if isinstance(obj, dict)]
