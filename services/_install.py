"""OpenSearch from Maven Central: fetch and assemble one runnable install (shared by nodes).

Maven serves ``integ-test-zip`` (core + transport-netty4 only) and the k-NN plugin zip
(Java parts only: we use the ``lucene`` engine). Painless, mustache, analysis-common and
mapper-extras are modules of the full distribution; their jars are on Maven, so they are
assembled into ``modules/`` with their plugin descriptors here. Every local node runs from
the same install (each with its own data, logs and ports); concurrent installers take a
file lock, so two ``services up`` never assemble into one directory at once.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from opendisco._exceptions import ServiceError
from opendisco._settings import Settings

__all__ = ["OpenSearchInstall"]

# module name -> (classname, extended plugins, jar artifact prefixes, security policy)
_MODULES: dict[str, tuple[str, str, tuple[str, ...], str]] = {
    "lang-painless": (
        "org.opensearch.painless.PainlessPlugin",
        "",
        ("lang-painless-", "opensearch-scripting-painless-spi-", "antlr4-runtime-", "asm-"),
        'grant {\n  permission java.lang.RuntimePermission "createClassLoader";\n'
        '  permission java.lang.RuntimePermission "getClassLoader";\n};\n',
    ),
    "lang-mustache": (
        "org.opensearch.script.mustache.MustachePlugin",
        "",
        ("lang-mustache-client-", "compiler-"),
        'grant {\n  permission java.lang.reflect.ReflectPermission "suppressAccessChecks";\n'
        '  permission java.lang.RuntimePermission "accessDeclaredMembers";\n};\n',
    ),
    "analysis-common": (
        "org.opensearch.analysis.common.CommonAnalysisPlugin",
        "lang-painless",
        ("analysis-common-",),
        "",
    ),
    "mapper-extras": (
        "org.opensearch.index.mapper.MapperExtrasPlugin",
        "",
        ("mapper-extras-client-",),
        "",
    ),
}


class OpenSearchInstall:
    """``<opensearch_home>`` (default ``<state_dir>/opensearch-<version>``), assembled once."""

    def __init__(self, settings: Settings, echo: Callable[[str], None] = print) -> None:
        self.s = settings
        self.echo = echo
        self.downloads = settings.cache_dir / "maven" / settings.opensearch_version
        self.home = settings.opensearch_home or (
            settings.state_dir / f"opensearch-{settings.opensearch_version}"
        )

    def env(self, heap: str) -> dict[str, str]:
        """Environment of an OpenSearch process (or of its plugin tool)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JAVA_", "OPENSEARCH_"))}
        env["OPENSEARCH_JAVA_HOME"] = self.s.java_home
        opts = (
            f"-Xms{heap} -Xmx{heap} -XX:-HeapDumpOnOutOfMemoryError {self.s.opensearch_java_opts}"
        )
        env["OPENSEARCH_JAVA_OPTS"] = opts.strip()
        return env

    def _mvn(self, *args: str) -> None:
        if shutil.which("mvn") is None:
            raise ServiceError("mvn not found: Maven is needed to fetch OpenSearch")
        cmd = ["mvn", "-B", "-q", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ServiceError(
                f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}\n"
                "See README 'Troubleshooting' for the versions Maven Central serves."
            )

    def fetch(self) -> None:
        ver, kver = self.s.opensearch_version, self.s.knn_version
        self.downloads.mkdir(parents=True, exist_ok=True)
        wanted = {
            f"opensearch-{ver}.zip": (
                f"org.opensearch.distribution.integ-test-zip:opensearch:{ver}:zip"
            ),
            f"opensearch-knn-{kver}.zip": f"org.opensearch.plugin:opensearch-knn:{kver}:zip",
        }
        for file, coords in wanted.items():
            if not (self.downloads / file).is_file():
                self.echo(f"fetching {coords}")
                self._mvn(
                    "dependency:copy", f"-Dartifact={coords}", f"-DoutputDirectory={self.downloads}"
                )
        jars = self.downloads / "module-jars"
        if not (jars / ".complete").is_file():
            self.echo("fetching OpenSearch module jars (painless, mustache, analysis-common)")
            pom = self.downloads / "modules-pom.xml"
            text = resources.files("opendisco.services").joinpath("modules-pom.xml").read_text()
            pom.write_text(text.replace("@OS@", ver))
            self._mvn(
                "-f", str(pom), "dependency:copy-dependencies",
                "-DexcludeTransitive=true", f"-DoutputDirectory={jars}",
            )  # fmt: skip
            (jars / ".complete").touch()

    def install(self) -> Path:
        """Assemble the install unless it is complete; return its directory."""
        if (self.home / ".complete").is_file():
            return self.home
        self.home.parent.mkdir(parents=True, exist_ok=True)
        with (self.home.parent / f".{self.home.name}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another installer may be half-way
            if not (self.home / ".complete").is_file():
                self._assemble()
        return self.home

    def _assemble(self) -> None:
        self.fetch()
        ver = self.s.opensearch_version
        self.echo(f"assembling OpenSearch {ver} in {self.home}")
        staging = self.home.with_name(self.home.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        with zipfile.ZipFile(self.downloads / f"opensearch-{ver}.zip") as zf:
            zf.extractall(staging)
            top = staging / f"opensearch-{ver}"
        for entry in (top / "bin").iterdir():
            entry.chmod(0o755)
        jars = sorted((self.downloads / "module-jars").glob("*.jar"))
        for module, (classname, extended, prefixes, policy) in _MODULES.items():
            mdir = top / "modules" / module
            mdir.mkdir(parents=True, exist_ok=True)
            for jar in jars:
                if jar.name.startswith(prefixes):
                    shutil.copy2(jar, mdir / jar.name)
            (mdir / "plugin-descriptor.properties").write_text(
                f"description=OpenSearch module {module}\nversion={ver}\nname={module}\n"
                f"classname={classname}\njava.version=11\nopensearch.version={ver}\n"
                f"extended.plugins={extended}\nhas.native.controller=false\n"
            )
            if policy:
                (mdir / "plugin-security.policy").write_text(policy)
        knn = self.downloads / f"opensearch-knn-{self.s.knn_version}.zip"
        proc = subprocess.run(
            [str(top / "bin" / "opensearch-plugin"), "install", "--batch", knn.as_uri()],
            env=self.env("256m"),
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise ServiceError(f"k-NN plugin install failed:\n{proc.stdout}{proc.stderr}")
        shutil.rmtree(self.home, ignore_errors=True)
        top.rename(self.home)
        shutil.rmtree(staging, ignore_errors=True)
        (self.home / ".complete").touch()
