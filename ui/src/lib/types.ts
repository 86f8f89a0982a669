export interface Money {
  cost_nanos: number;
  cost_usd: string;
}

export interface Me {
  user: { id: number; email: string };
  organization: { id: number; name: string };
  role: 'owner' | 'admin' | 'viewer';
  memberships?: { organization: { id: number; name: string }; role: string }[];
}

export interface Budget {
  id: number;
  scope: 'org' | 'agent';
  agent: string | null;
  kind: 'usd' | 'tokens' | 'calls';
  period: 'daily' | 'weekly' | 'monthly' | 'total';
  limit: number;
  limit_usd?: string;
  created_at: string;
  updated_at: string;
}

export interface PeriodSpend {
  period_id: string;
  cost_nanos: number;
  tokens: number;
  calls: number;
}

export type SpendByPeriod = Record<'daily' | 'weekly' | 'monthly' | 'total', PeriodSpend>;

export interface Agent {
  name: string;
  status: 'running' | 'stopped';
  kill_reason: string | null;
  control_version: number;
  created_at: string;
  last_seen_at: string | null;
  spend_today: Money;
  spend_month: Money;
  budgets?: Budget[];
  spend?: SpendByPeriod;
}

export interface Run extends Money {
  id: number;
  agent: string;
  run_id: string;
  started_at: string;
  last_event_at: string;
  calls: number;
}

/** Totals over every stored event of a run, from the server. */
export interface RunTotals {
  events: number;
  refused: number;
  input_tokens: number;
  output_tokens: number;
  cost_nanos: number;
}

export interface RunWithTotals extends Run {
  totals: RunTotals;
}

export interface CallEvent extends Money {
  id: string;
  agent: string;
  run: number | null;
  provider: string;
  model: string;
  operation: string;
  status: 'ok' | 'error' | 'refused' | 'cut' | 'cancelled';
  refusal_reason: string | null;
  error: string | null;
  started_at: string;
  duration_ms: number;
  reserved_nanos: number;
  usage: {
    input_tokens: number;
    output_tokens: number;
    cache_read_tokens: number;
    cache_write_tokens: number;
    reasoning_tokens: number;
  };
  prompt: string | null;
  /** What the SDK reported beyond the main columns; older events may lack any key. */
  details?: CallDetails | null;
}

export interface CallDetails {
  /** The provider's price tier the call was charged at ("priority", "flex", "fast"); null = standard. */
  price_tier?: string | null;
  web_searches?: number;
  file_searches?: number;
  /** Characters of input billed by the character (tts-1 speech). */
  input_characters?: number;
  /** Seconds of audio billed by the second (whisper-1 transcriptions and translations). */
  audio_seconds?: number;
  [key: string]: unknown;
}

export interface Overview {
  today: Money;
  month: Money & { calls: number; tokens: number; refusals: number };
  projection_month_end: Money;
  top_agents: (Money & { agent: string; calls: number })[];
  top_models: (Money & { model: string; calls: number })[];
  refusals_by_reason: Record<string, number>;
}

export interface StatPoint extends Money {
  bucket: string;
  agent?: string;
  model?: string;
  calls: number;
  tokens: number;
  refusals: number;
}

export interface Stats {
  granularity: 'hour' | 'day';
  days: number;
  since: string;
  by_agent: StatPoint[];
  by_model: StatPoint[];
}

export interface ApiKey {
  id: number;
  name: string;
  prefix: string;
  environment: 'live' | 'test';
  created_at: string;
  last_used_at: string | null;
  revoked_at: string | null;
  key?: string;
}

export interface AlertRule {
  id: number;
  name: string;
  agent: string | null;
  kind: 'usd' | 'tokens' | 'calls';
  period: 'daily' | 'weekly' | 'monthly' | 'total';
  threshold: number;
  threshold_usd?: string;
  channel: 'email' | 'slack' | 'webhook';
  target: string;
  enabled: boolean;
  created_at: string;
}

export interface AlertEvent {
  id: number;
  kind: string;
  agent: string | null;
  message: string;
  actor: number | null;
  details: Record<string, unknown> | null;
  created_at: string;
}

export interface PriceRow {
  provider: string;
  provider_name: string;
  model: string;
  name: string;
  context_window: number | null;
  tiered: boolean;
  input_per_mtok: string | null;
  output_per_mtok: string | null;
  cache_read_per_mtok: string | null;
  cache_write_per_mtok: string | null;
}

export interface LiveAgent {
  name: string;
  status: 'running' | 'stopped';
  reason: string | null;
  last_seen_at: string | null;
  spend_today_nanos: number;
  spend_month_nanos: number;
  calls_month: number;
  refusals_month: number;
}

export interface LiveSnapshot {
  type: 'snapshot';
  today_nanos: number;
  month_nanos: number;
  agents: LiveAgent[];
}
