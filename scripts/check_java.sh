#!/usr/bin/env bash
# TorchServe 0.12's frontend is Java: it needs a JDK/JRE 17 or newer on PATH (or in JAVA_HOME).
set -u
java_bin=java
[ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ] && java_bin="$JAVA_HOME/bin/java"
if ! command -v "$java_bin" >/dev/null 2>&1; then
  cat >&2 <<'MSG'
error: Java 17+ is required by TorchServe's frontend and was not found.
  Debian/Ubuntu:  sudo apt-get update && sudo apt-get install -y openjdk-17-jre-headless
  macOS:          brew install openjdk@17
  or set JAVA_HOME to a JDK 17+ installation.
MSG
  exit 1
fi
version=$("$java_bin" -version 2>&1 | sed -n 's/.*version "\([0-9][0-9]*\).*/\1/p' | head -n1)
if [ -z "$version" ] || [ "$version" -lt 17 ]; then
  echo "error: TorchServe needs Java 17+, found: $("$java_bin" -version 2>&1 | head -n1)" >&2
  echo "  Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless (then select it with update-alternatives)" >&2
  exit 1
fi
