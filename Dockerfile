# Herald image for docker-compose.yml. Node 24 runs the TypeScript sources directly
# (type stripping); librdkafka is only needed for the embedded broker, which a compose
# deployment does not use.
FROM node:24-bookworm-slim
# jemalloc returns memory that glibc's malloc keeps after bursts (README, State: Memory).
RUN apt-get update && apt-get install -y --no-install-recommends libjemalloc2 \
  && ln -s "$(find /usr/lib -name libjemalloc.so.2 | head -n 1)" /usr/local/lib/libjemalloc.so.2 \
  && rm -rf /var/lib/apt/lists/*
ENV LD_PRELOAD=/usr/local/lib/libjemalloc.so.2
WORKDIR /app
COPY package.json package-lock.json ./
COPY patches ./patches
RUN npm ci --omit=dev --ignore-scripts && npx patch-package && npm rebuild @nxtedition/rocksdb
COPY . .
ENV NODE_ENV=production
EXPOSE 8080
# As `npm start` does: the V8 heap sized by HERALD_HEAP_MB (README, State: Memory); exec keeps
# node as PID 1, so it gets the container's SIGTERM.
CMD exec node --max-old-space-size="${HERALD_HEAP_MB:-256}" --max-semi-space-size=16 cli/herald.ts start
