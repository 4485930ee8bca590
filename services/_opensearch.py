"""OpenSearch from Maven Central: fetch, assemble a runnable single node, start, stop, check.

Maven serves ``integ-test-zip`` (core + transport-netty4 only) and the k-NN plugin zip
(Java parts only: we use the ``lucene`` engine). Painless, mustache, analysis-common and
mapper-extras are modules of the full distribution; their jars are on Maven, so they are
assembled into ``modules/`` with their plugin descriptors here.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import httpx

from opendisco._exceptions import ServiceError
from opendisco._settings import Settings

from ._process import read_pid, spawn, stop_pid, wait_until

__all__ = ["OpenSearchService"]

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


@dataclass(frozen=True)
class Status:
    name: str
    healthy: bool
    detail: str


class OpenSearchService:
    name = "opensearch"

    def __init__(self, settings: Settings, echo=print) -> None:  # type: ignore[no-untyped-def]
        self.s = settings
        self.echo = echo
        self.downloads = settings.cache_dir / "maven" / settings.opensearch_version
        self.home = settings.state_dir / f"opensearch-{settings.opensearch_version}"
        self.data = settings.state_dir / "opensearch-data"
        self.logs = settings.state_dir / "logs"
        self.log_file = self.logs / "opensearch.log"
        self.pid_file = settings.state_dir / "run" / "opensearch.pid"

    # -- provisioning ----------------------------------------------------------------
    @property
    def local(self) -> bool:
        return httpx.URL(self.s.opensearch_url).host in {"127.0.0.1", "localhost", "::1"}

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

    def install(self) -> None:
        if (self.home / ".complete").is_file():
            return
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
            env=self._env(),
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise ServiceError(f"k-NN plugin install failed:\n{proc.stdout}{proc.stderr}")
        final = staging.parent / self.home.name
        shutil.rmtree(final, ignore_errors=True)
        top.rename(final)
        shutil.rmtree(staging, ignore_errors=True)
        (final / ".complete").touch()

    # -- running -----------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JAVA_", "OPENSEARCH_"))}
        env["OPENSEARCH_JAVA_HOME"] = self.s.java_home
        heap = self.s.opensearch_heap
        env["OPENSEARCH_JAVA_OPTS"] = f"-Xms{heap} -Xmx{heap} -XX:-HeapDumpOnOutOfMemoryError"
        return env

    def _run_as(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        user = self.s.service_user
        try:
            pwd.getpwnam(user)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user],
                check=True,
            )
        for path in (self.s.state_dir, self.home, self.data, self.logs, self.pid_file.parent):
            path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["chown", "-R", f"{user}:{user}", str(self.s.state_dir)], check=True)
        self.s.state_dir.chmod(0o755)
        return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]

    def healthy(self) -> bool:
        try:
            r = httpx.get(
                f"{self.s.opensearch_url}/_cluster/health",
                params={"wait_for_status": "yellow", "timeout": "1s"},
                timeout=3,
            )
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    def up(self) -> str:
        if self.healthy():
            return f"already running at {self.s.opensearch_url}"
        if not self.local:
            raise ServiceError(f"OpenSearch at {self.s.opensearch_url} is not reachable")
        pid = read_pid(self.pid_file)
        if pid is None:
            self.install()
            self.data.mkdir(parents=True, exist_ok=True)
            self.logs.mkdir(parents=True, exist_ok=True)
            argv = [
                *self._run_as(),
                str(self.home / "bin" / "opensearch"),
                "-Ediscovery.type=single-node",
                "-Enetwork.host=127.0.0.1",
                f"-Ehttp.port={self.s.opensearch_port}",
                "-Etransport.port=9300-9400",
                f"-Epath.data={self.data}",
                f"-Epath.logs={self.logs}",
                "-Ecluster.name=opendisco",
                "-Eaction.auto_create_index=false",
                "-Ecluster.routing.allocation.disk.threshold_enabled=false",
                "-Eknn.algo_param.index_thread_qty=2",
            ]
            self.echo(f"starting OpenSearch {self.s.opensearch_version} on {self.s.opensearch_url}")
            pid = spawn(
                argv,
                log_file=self.logs / "opensearch-console.log",
                pid_file=self.pid_file,
                env=self._env(),
                cwd=self.home,
            )
        wait_until(
            self.healthy,
            name="OpenSearch",
            timeout=self.s.startup_timeout,
            pid=pid,
            log_file=self.logs / "opensearch-console.log",
        )
        return f"started at {self.s.opensearch_url} (pid {pid})"

    def down(self) -> str:
        return "stopped" if stop_pid(self.pid_file) else "not running"

    def status(self) -> Status:
        try:
            root = httpx.get(self.s.opensearch_url, timeout=3).json()
            health = httpx.get(f"{self.s.opensearch_url}/_cluster/health", timeout=3).json()
            plugins = httpx.get(
                f"{self.s.opensearch_url}/_cat/plugins", params={"format": "json"}, timeout=3
            ).json()
        except (httpx.HTTPError, ValueError) as exc:
            return Status(self.name, False, f"{self.s.opensearch_url} unreachable ({exc})")
        names = sorted({p["component"] for p in plugins})
        return Status(
            self.name,
            health.get("status") in {"green", "yellow"},
            f"OpenSearch {root['version']['number']} at {self.s.opensearch_url}, "
            f"cluster {health.get('status')}, plugins: {', '.join(names) or 'none'}",
        )

    def log_path(self) -> Path:
        return self.logs / "opensearch-console.log"
