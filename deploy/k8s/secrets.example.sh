#!/usr/bin/env bash
# Template: creates the Secrets the manifests reference, from environment variables (nothing is committed).
# Production: have your secret manager (External Secrets, Vault, sealed-secrets...) produce the same
# Secrets with the same keys instead.
#
#   export RAG_DATABASE_URL=postgresql://frugal_rag:<pw>@<host>:5432/frugal RAG_DB_PASSWORD=<pw> ...
#   deploy/k8s/secrets.example.sh [namespace]
#
# Secret                     keys (env var names of the service)                  required in prod (dev)
# frugal-router              GEMINI_API_KEY ANTHROPIC_API_KEY                    yes (no: offline without keys)
# frugal-vision-dedup        GEMINI_API_KEY                                      yes (no)
# frugal-rag                 DATABASE_URL VOYAGE_API_KEY COHERE_API_KEY          yes (yes: DATABASE_URL)
# frugal-billing             DATABASE_URL                                        yes (yes)
# frugal-media-gateway       LIVEKIT_URL LIVEKIT_API_KEY LIVEKIT_API_SECRET      yes (no: no LiveKit, health only)
#                            DEEPGRAM_API_KEY ELEVENLABS_API_KEY
# frugal-redis               COST_EVENTS_REDIS_URL (persistent, AOF, noeviction) yes (no: the dev overlay's Redis)
#                            REDIS_URL (caches, rate limits; eviction allowed)
# frugal-keda-redis          address (host:port of the cost-events Redis)        with KEDA (overlays/prod)
#                            password                                            for billing's lag scaler
# frugal-rag-migrations      MIGRATION_DATABASE_URL (schema owner) APP_DB_PASSWORD   yes (init container)
# frugal-billing-migrations  MIGRATION_DATABASE_URL APP_DB_PASSWORD                  yes
# frugal-dev-postgres        POSTGRES_PASSWORD                                       dev overlay only
# In production a missing Secret or key keeps the pod from starting: `kubectl get pods` shows
# CreateContainerConfigError and `kubectl describe pod` names the key (scripts/verify-deployment too).
# APP_DB_PASSWORD is the password the migrations give the app role; it must match the one in DATABASE_URL.
set -euo pipefail
NS=${1:-frugal}

apply() {  # apply NAME KEY=ENVVAR...   (keys whose variable is unset or empty are left out)
  local name=$1; shift
  local args=()
  for pair in "$@"; do
    local key=${pair%%=*} var=${pair#*=}
    if [ -n "${!var:-}" ]; then args+=("--from-literal=$key=${!var}"); fi
  done
  kubectl create secret generic "$name" -n "$NS" "${args[@]}" --dry-run=client -o yaml | kubectl apply -f -
}

apply frugal-router GEMINI_API_KEY=GEMINI_API_KEY ANTHROPIC_API_KEY=ANTHROPIC_API_KEY
apply frugal-vision-dedup GEMINI_API_KEY=GEMINI_API_KEY
apply frugal-rag DATABASE_URL=RAG_DATABASE_URL VOYAGE_API_KEY=VOYAGE_API_KEY COHERE_API_KEY=COHERE_API_KEY
apply frugal-billing DATABASE_URL=BILLING_DATABASE_URL
apply frugal-media-gateway LIVEKIT_URL=LIVEKIT_URL LIVEKIT_API_KEY=LIVEKIT_API_KEY \
  LIVEKIT_API_SECRET=LIVEKIT_API_SECRET DEEPGRAM_API_KEY=DEEPGRAM_API_KEY ELEVENLABS_API_KEY=ELEVENLABS_API_KEY
if [ -n "${COST_EVENTS_REDIS_URL:-}${REDIS_URL:-}" ]; then
  apply frugal-redis COST_EVENTS_REDIS_URL=COST_EVENTS_REDIS_URL REDIS_URL=REDIS_URL
fi
if [ -n "${KEDA_REDIS_ADDRESS:-}" ]; then
  apply frugal-keda-redis address=KEDA_REDIS_ADDRESS password=KEDA_REDIS_PASSWORD
fi
apply frugal-rag-migrations MIGRATION_DATABASE_URL=OWNER_DATABASE_URL APP_DB_PASSWORD=RAG_DB_PASSWORD
apply frugal-billing-migrations MIGRATION_DATABASE_URL=OWNER_DATABASE_URL APP_DB_PASSWORD=BILLING_DB_PASSWORD
if [ -n "${POSTGRES_PASSWORD:-}" ]; then apply frugal-dev-postgres POSTGRES_PASSWORD=POSTGRES_PASSWORD; fi
