"""load_manifests() and fingerprint(): Services and EndpointSlices from files."""
import json
import os
import re
import shutil

import pytest

from ebpflb.sources.manifest_files import ManifestError, fingerprint, load_manifests


def service_yaml(name):
    return (f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n"
            "spec: {clusterIP: 10.96.0.10}\n")


def slice_yaml(name):
    return (f"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n"
            f"metadata: {{name: {name}, namespace: default}}\n")


def write(root, files: dict[str, str | bytes]):
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def names(objects):
    return [obj["metadata"]["name"] for obj in objects]


LOAD_CASES = [
    pytest.param({"one.yaml": service_yaml("web")}, "one.yaml", ["web"], [], id="single-file"),
    pytest.param({"all.yaml": "---\n" + service_yaml("web") + "---\n" + slice_yaml("web-a") + "---\n---\n"
                  + service_yaml("api")},
                 "all.yaml", ["web", "api"], ["web-a"], id="multi-document-with-empty-documents"),
    pytest.param({"mixed.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\n---\n"
                  "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: dep}\n---\n"
                  "apiVersion: v2\nkind: Service\nmetadata: {name: future}\n---\n"
                  "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: old}\n---\n"
                  "just a string\n---\n- a\n- list\n---\n" + service_yaml("web")},
                 "mixed.yaml", ["web"], [], id="other-kinds-versions-and-shapes-ignored"),
    pytest.param({"list.yaml": "apiVersion: v1\nkind: List\nitems:\n"
                  + "".join("- " + doc.replace("\n", "\n  ").rstrip() + "\n"
                            for doc in (service_yaml("web"), slice_yaml("web-a"),
                                        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\n"))},
                 "list.yaml", ["web"], ["web-a"], id="list-expanded"),
    pytest.param({"list.yaml": "apiVersion: anything/v9\nkind: List\nitems: null\n"}, "list.yaml", [], [],
                 id="list-without-items"),
    pytest.param({"svc.json": json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}}]}, indent="\t")},
                 "svc.json", ["web"], [], id="json-file"),
    pytest.param({"b/2.yml": service_yaml("b2"), "a.yaml": service_yaml("a"), "b/1.json": slice_yaml("b1"),
                  "c/d/deep.yaml": service_yaml("deep"), "notes.txt": "not: [yaml", "README.md": "# no",
                  "UPPER.YAML": service_yaml("upper")},
                 ".", ["upper", "a", "b2", "deep"], ["b1"], id="directory-recursive-sorted-manifests-only"),
    pytest.param({}, ".", [], [], id="empty-directory"),
]


@pytest.mark.parametrize("files, target, service_names, slice_names", LOAD_CASES)
def test_load_manifests(tmp_path, files, target, service_names, slice_names):
    write(tmp_path, files)
    services, slices = load_manifests(tmp_path / target)
    assert (names(services), names(slices)) == (service_names, slice_names)


def test_objects_come_back_as_plain_dicts(tmp_path):
    write(tmp_path, {"web.yaml": service_yaml("web")})
    services, _ = load_manifests(tmp_path / "web.yaml")
    assert services == [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
                         "spec": {"clusterIP": "10.96.0.10"}}]


ERROR_CASES = [
    pytest.param({"good.yaml": service_yaml("web"), "bad.yaml": "kind: Service\nmetadata: {name: [unclosed\n"},
                 "bad.yaml", id="yaml-syntax-error"),
    pytest.param({"bad.json": '{"kind": "Service",'}, "bad.json", id="json-syntax-error"),
    pytest.param({"bad.yaml": b"kind: \xff\xfe\n"}, "bad.yaml", id="not-utf8"),
    pytest.param({"list.yaml": "kind: List\nitems: {a: b}\n"}, "list.yaml", id="list-items-not-a-list"),
]


@pytest.mark.parametrize("files, culprit", ERROR_CASES)
def test_unusable_file_raises_naming_it(tmp_path, files, culprit):
    write(tmp_path, files)
    with pytest.raises(ManifestError, match=re.escape(str(tmp_path / culprit))):
        load_manifests(tmp_path)


def test_missing_file_raises_naming_it(tmp_path):
    with pytest.raises(ManifestError, match=re.escape(str(tmp_path / "gone.yaml"))):
        load_manifests(tmp_path / "gone.yaml")


def set_mtime(path, ns):
    os.utime(path, ns=(ns, ns))


FINGERPRINT_CHANGES = [
    pytest.param(lambda d: (d / "a.yaml").write_text(service_yaml("changed")), id="content-and-size"),
    pytest.param(lambda d: set_mtime(d / "a.yaml", 2_000_000_000_000_000_000), id="mtime-only"),
    pytest.param(lambda d: (d / "sub" / "new.yml").write_text(service_yaml("new")), id="file-added"),
    pytest.param(lambda d: (d / "sub" / "b.json").unlink(), id="file-removed"),
    pytest.param(lambda d: (d / "sub" / "b.json").rename(d / "sub" / "c.json"), id="file-renamed"),
]


@pytest.fixture
def manifest_dir(tmp_path):
    write(tmp_path, {"a.yaml": service_yaml("a"), "sub/b.json": slice_yaml("b"), "notes.txt": "x"})
    for path in (tmp_path / "a.yaml", tmp_path / "sub" / "b.json"):
        set_mtime(path, 1_000_000_000_000_000_000)
    return tmp_path


@pytest.mark.parametrize("change", FINGERPRINT_CHANGES)
def test_fingerprint_changes_with_the_manifests(manifest_dir, change):
    before = fingerprint(manifest_dir)
    assert fingerprint(manifest_dir) == before
    change(manifest_dir)
    assert fingerprint(manifest_dir) != before


def test_fingerprint_ignores_other_files(manifest_dir):
    before = fingerprint(manifest_dir)
    (manifest_dir / "notes.txt").write_text("changed, and longer")
    assert fingerprint(manifest_dir) == before


def test_fingerprint_of_a_file_and_of_nothing(manifest_dir):
    file = manifest_dir / "a.yaml"
    stat = file.stat()
    assert fingerprint(file) == ((str(file), stat.st_dev, stat.st_ino, 1_000_000_000_000_000_000, stat.st_size),)
    assert fingerprint(manifest_dir / "gone.yaml") == ()


def kubelet_configmap(root, files: dict[str, str], stamp: str) -> None:
    """What the kubelet makes of a mounted ConfigMap: the files in a hidden timestamped folder, `..data`
    pointing there (swapped by a rename), and each name a link through `..data`."""
    folder = root / f"..{stamp}"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    tmp = root / "..data_tmp"
    tmp.symlink_to(folder.name)
    old = (root / "..data").resolve() if (root / "..data").exists() else None
    os.replace(tmp, root / "..data")
    for name in files:
        if not (root / name).is_symlink():
            (root / name).symlink_to(f"..data/{name}")
    if old is not None:
        shutil.rmtree(old)


CM_SERVICE = """apiVersion: v1
kind: Service
metadata: {name: %s, namespace: default}
spec: {clusterIP: 10.96.0.9, ports: [{port: 80}]}
"""


def test_a_configmap_mount_is_read_once_and_followed_through_its_swap(tmp_path):
    kubelet_configmap(tmp_path, {"svc.yaml": CM_SERVICE % "first"}, "2026_12_05_10_00_00.000000001")
    services, _ = load_manifests(tmp_path)
    assert [s["metadata"]["name"] for s in services] == ["first"]   # not once more from ..2026_.../
    before = fingerprint(tmp_path)
    kubelet_configmap(tmp_path, {"svc.yaml": CM_SERVICE % "second"}, "2026_12_05_10_01_00.000000002")
    assert fingerprint(tmp_path) != before
    assert [s["metadata"]["name"] for s in load_manifests(tmp_path)[0]] == ["second"]
