# The example experiment's image. expman builds it from the committed Dockerfile of the
# commit being run; the code itself is put into /code at start, so a commit that changes
# only code reuses this image unchanged.
# expman-base:bookworm is Debian bookworm with python3, built offline by
# scripts/build-base-image (no image registry is needed).
FROM expman-base:bookworm
ENV PYTHONDONTWRITEBYTECODE=1 LANG=C.UTF-8
RUN python3 -c "import json, math, random, struct"
WORKDIR /code
