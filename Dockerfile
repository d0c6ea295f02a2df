# Herald image for docker-compose.yml. Node 24 runs the TypeScript sources directly
# (type stripping); librdkafka is only needed for the embedded broker, which a compose
# deployment does not use.
FROM node:24-bookworm-slim
WORKDIR /app
COPY package.json package-lock.json ./
COPY patches ./patches
RUN npm ci --omit=dev --ignore-scripts && npx patch-package && npm rebuild @nxtedition/rocksdb
COPY . .
ENV NODE_ENV=production
EXPOSE 8080
CMD ["node", "cli/herald.ts", "start"]
