"""The images the container tiers build and run (tests/integration/test_images.py,
tests/e2e/test_containers.py, the act build jobs): their names, and whether an engine is required."""

from __future__ import annotations

import os

from kubeflow_pipeline.images import ImageSettings

# Read at import: the suite's autouse fixture clears CTLOOP_* variables around each test.
REQUIRE_DOCKER = os.environ.get("CTLOOP_REQUIRE_DOCKER") == "1"
IMAGES = ImageSettings("localhost/ctloop-test", "test")
# The serving pods the tests start live seconds, like the tests' own TorchServes: their JVMs get
# the same C1-only JIT (tests/conftest.py sets it for those; a pod start 2.2 -> about 1.3
# CPU-seconds). The image and its vmargs are as shipped.
POD_JAVA_OPTIONS = "-XX:TieredStopAtLevel=1"
