"""The images the container tiers build and run (tests/integration/test_images.py,
tests/e2e/test_containers.py, the act build jobs): their names, and whether an engine is required."""

from __future__ import annotations

import os

from kubeflow_pipeline.images import ImageSettings

# Read at import: the suite's autouse fixture clears CTLOOP_* variables around each test.
REQUIRE_DOCKER = os.environ.get("CTLOOP_REQUIRE_DOCKER") == "1"
IMAGES = ImageSettings("localhost/ctloop-test", "test")
# The JIT of every TorchServe JVM the tests start, on the host (tests/conftest.py sets it as
# JAVA_TOOL_OPTIONS, which says why) and in the serving pods they start (start_serving's
# java_options; the image and its vmargs are as shipped): C1 only.
TEST_JAVA_OPTIONS = "-XX:TieredStopAtLevel=1"
