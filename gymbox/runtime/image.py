"""The sandbox image: Python 3 and a non-root user, built without any container registry.

The default path needs no registry at all: ``debootstrap`` assembles a Debian root file system
from Debian's package archive, and the engine imports it as an image. The tag carries a hash of
the :class:`ImageRecipe`, so a rebuild with nothing changed finds the image and returns in
well under a second. A user whose engine can pull may build from a base image instead
(``gymbox image build --base python:3.12-slim``); nothing is pulled unless they also pass
``--pull``.

The supervisor is not baked in: it is sent over the exec stream when a container starts, so any
image with ``python3`` and the sandbox user works, and changing the supervisor never forces a
rebuild.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import docker
import docker.errors

from gymbox.runtime.errors import ConfigurationError, ImageMissing

REPOSITORY = "gymbox-sandbox"
DEFAULT_IMAGE = f"{REPOSITORY}:latest"
SANDBOX_USER = "sandbox"
SANDBOX_UID = 1000
WORKSPACE = "/workspace"

Say = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class ImageRecipe:
    """What goes into the default image. Its hash names the image, so any change rebuilds.

    Attributes:
        suite: the Debian release to bootstrap.
        packages: Debian packages on top of ``minbase``; ``python3`` brings the standard library.
        mirror: where debootstrap fetches packages (not part of the hash: same bits anywhere).
    """

    suite: str = "bookworm"
    packages: tuple[str, ...] = ("python3", "python3-venv")
    mirror: str = field(default="http://deb.debian.org/debian", compare=False)

    @property
    def digest(self) -> str:
        content = {k: v for k, v in asdict(self).items() if k != "mirror"}
        content.update(user=SANDBOX_USER, uid=SANDBOX_UID, workspace=WORKSPACE, layout=1)
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def tag(self) -> str:
        return f"{REPOSITORY}:{self.suite}-{self.digest}"


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """One gymbox image on the engine."""

    tags: tuple[str, ...]
    image_id: str
    size_mb: float
    created: str


def ensure_image(
    client: docker.DockerClient,
    recipe: ImageRecipe = ImageRecipe(),
    *,
    say: Say = lambda _: None,
) -> str:
    """Return the recipe's tag, building the image from Debian packages if it is not there.

    Also points ``gymbox-sandbox:latest`` at it. Needs root and ``debootstrap`` only when it
    has to build.
    """
    if _exists(client, recipe.tag):
        say(f"reusing {recipe.tag}")
    else:
        _build_from_debian(client, recipe, say)
    client.images.get(recipe.tag).tag(REPOSITORY, "latest")
    return recipe.tag


def build_from_base(
    client: docker.DockerClient, base: str, *, pull: bool = False, say: Say = lambda _: None
) -> str:
    """Build the sandbox image on top of ``base`` (any image with ``python3`` and ``useradd``).

    Nothing is pulled unless ``pull`` is true: a base that is not on the engine is an error
    that says so.
    """
    if not _exists(client, base):
        if not pull:
            raise ImageMissing(
                f"base image {base} is not on the engine; pass --pull to fetch it from its "
                "registry, or build without --base (Debian packages, no registry)"
            )
        say(f"pulling {base}")
        client.images.pull(base)
    dockerfile = (
        f"FROM {base}\n"
        f"RUN useradd --uid {SANDBOX_UID} --create-home {SANDBOX_USER} "
        f"&& mkdir -p {WORKSPACE} && chown {SANDBOX_UID}:{SANDBOX_UID} {WORKSPACE}\n"
        f"WORKDIR {WORKSPACE}\n"
        'CMD ["sleep", "infinity"]\n'
    )
    digest = hashlib.sha256(f"{base}\n{dockerfile}".encode()).hexdigest()[:12]
    tag = f"{REPOSITORY}:{base.replace(':', '-').replace('/', '-')}-{digest}"
    if _exists(client, tag):
        say(f"reusing {tag}")
    else:
        say(f"building {tag} from {base}")
        client.images.build(
            fileobj=io.BytesIO(dockerfile.encode()), tag=tag, pull=False, rm=True,
            labels={"gymbox": "1"},
        )
    client.images.get(tag).tag(REPOSITORY, "latest")
    return tag


def require_image(client: docker.DockerClient, tag: str) -> None:
    """Raise :class:`ImageMissing` with the command to run when ``tag`` is not on the engine."""
    if not _exists(client, tag):
        raise ImageMissing(f"sandbox image {tag} is not on the engine; run `gymbox image build`")


def list_images(client: docker.DockerClient) -> list[ImageInfo]:
    """The gymbox images on the engine, newest first."""
    images = client.images.list(name=REPOSITORY)
    infos = [
        ImageInfo(
            tags=tuple(sorted(image.tags)),
            image_id=image.short_id.removeprefix("sha256:"),
            size_mb=round(image.attrs.get("Size", 0) / 2**20, 1),
            created=image.attrs.get("Created", "")[:19].replace("T", " "),
        )
        for image in images
    ]
    return sorted(infos, key=lambda info: info.created, reverse=True)


def _exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def _build_from_debian(client: docker.DockerClient, recipe: ImageRecipe, say: Say) -> None:
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise ConfigurationError(
            "debootstrap is not installed: run `apt-get install debootstrap` as root "
            "(or `gymbox image build --base python:3.12-slim --pull` if your engine can pull)"
        )
    with tempfile.TemporaryDirectory(prefix="gymbox-rootfs-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        say(f"debootstrap {recipe.suite} with {', '.join(recipe.packages)} (about a minute)")
        _run(
            [debootstrap, "--variant=minbase", f"--include={','.join(recipe.packages)}",
             recipe.suite, str(rootfs), recipe.mirror],
            "debootstrap",
        )
        _add_sandbox_user(rootfs)
        _slim(rootfs)
        archive = Path(tmp) / "rootfs.tar"
        say("packing the root file system")
        _run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(archive), "."], "tar")
        say(f"importing as {recipe.tag}")
        repository, tag = recipe.tag.split(":")
        client.api.import_image_from_file(
            str(archive), repository=repository, tag=tag,
            changes=[
                f"WORKDIR {WORKSPACE}",
                "ENV LANG=C.UTF-8",
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                'CMD ["sleep", "infinity"]',
                f"LABEL gymbox=1 gymbox.recipe={recipe.digest}",
            ],
        )
    if not _exists(client, recipe.tag):
        raise ConfigurationError(f"the engine did not keep the imported image {recipe.tag}")


def _add_sandbox_user(rootfs: Path) -> None:
    name, uid = SANDBOX_USER, SANDBOX_UID
    with open(rootfs / "etc/passwd", "a") as f:
        f.write(f"{name}:x:{uid}:{uid}::/home/{name}:/bin/sh\n")
    with open(rootfs / "etc/group", "a") as f:
        f.write(f"{name}:x:{uid}:\n")
    with open(rootfs / "etc/shadow", "a") as f:
        f.write(f"{name}:!:19000::::::\n")
    for path in (rootfs / "home" / name, rootfs / WORKSPACE.lstrip("/")):
        path.mkdir(parents=True, exist_ok=True)
        shutil.chown(path, uid, uid)


def _slim(rootfs: Path) -> None:
    """Drop the package caches: they are a third of the rootfs and never used in a sandbox."""
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
        target = rootfs / cache
        if target.is_dir():
            for child in target.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()


def _run(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise ConfigurationError(f"{what} failed (exit {proc.returncode}):\n{tail}")
