import { repoLabel, type RepoRef } from './cache.js';
import { HubError } from './errors.js';

// HTTP to the hub: retries with backoff for what is transient (dropped connections, 429/5xx), and one-line
// errors for what is not (401/403/404 named by repo, revision and file; an unreachable endpoint named).

export interface RetryPolicy {
  /** Tries in all, the first included. */
  attempts: number;
  /** Wait before the second try; doubled before each further one. */
  delayMs: number;
  /** A download that receives nothing for this long counts as dropped (and resumes). */
  stallMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { attempts: 4, delayMs: 500, stallMs: 30_000 };

/** What a request is for, so an error can say so. */
export interface Target {
  repo: RepoRef;
  revision: string;
  /** The file, for downloads; absent for repo-level calls (revision, tree). */
  path?: string;
  endpoint: string;
  tokenSet: boolean;
}

const TRANSIENT_STATUS = new Set([429, 500, 502, 503, 504]);

export function isTransientStatus(status: number): boolean {
  return TRANSIENT_STATUS.has(status);
}

export function describeTarget(t: Target): string {
  return t.path ? `${t.path} of ${repoLabel(t.repo)} (revision ${t.revision})` : `${repoLabel(t.repo)} (revision ${t.revision})`;
}

/** The repo's page on the hub, where gated repos' licences are accepted. */
function repoPage(t: Target): string {
  return `${t.endpoint}/${t.repo.type === 'dataset' ? 'datasets/' : ''}${t.repo.id}`;
}

export function isAbort(err: unknown, signal?: AbortSignal): boolean {
  return signal?.aborted === true || (err instanceof Error && err.name === 'AbortError');
}

/** The system's word for a failed connection (ECONNREFUSED, ENOTFOUND, ECONNRESET...) from fetch's error chain. */
export function networkReason(err: unknown): string {
  let e: unknown = err;
  for (let depth = 0; e instanceof Error && depth < 5; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && !code.startsWith('UND_ERR_')) return code;
    if (!(e.cause instanceof Error)) return e.message || 'connection failed';
    e = e.cause;
  }
  return 'connection failed';
}

/** `reason`: what the last try ran into (networkReason of the error, or a sentence on the cut body). */
export function networkError(t: Target, reason: string, attempts: number): HubError {
  return new HubError(
    'network',
    `cannot download ${describeTarget(t)}: the hub at ${t.endpoint} is unreachable or dropped the connection (${reason}; ${attempts} ${attempts === 1 ? 'try' : 'tries'}); check the network and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use only the cache`,
  );
}

/** The hub's own one-line reason from an error body, if it sent one. */
async function serverReason(res: Response): Promise<string> {
  try {
    const text = (await res.text()).trim();
    let reason = text;
    try {
      const json = JSON.parse(text) as { error?: unknown; message?: unknown };
      reason = typeof json.error === 'string' ? json.error : typeof json.message === 'string' ? json.message : text;
    } catch {
      // not JSON: the text is the reason
    }
    reason = reason.replace(/\s+/g, ' ').trim();
    return reason.length > 160 ? `${reason.slice(0, 157)}...` : reason;
  } catch {
    return '';
  }
}

export async function httpError(res: Response, t: Target): Promise<HubError> {
  const code = res.headers.get('x-error-code') ?? '';
  const what = describeTarget(t);
  const status = `HTTP ${res.status}`;
  // A 403 to a valid token is the hub's answer for a gated repo whose licence that account has not accepted.
  if (code === 'GatedRepo' || (res.status === 403 && t.tokenSet)) {
    return new HubError('unauthorized', `${repoLabel(t.repo)} is gated (${status}): accept its licence on ${repoPage(t)} with the account whose token is in HF_TOKEN`);
  }
  if (res.status === 401 || res.status === 403) {
    const token = t.tokenSet ? 'the token in HF_TOKEN was refused: set HF_TOKEN to a token that can read it' : 'set HF_TOKEN to a token that can read it';
    return new HubError('unauthorized', `cannot download ${what}: the hub at ${t.endpoint} answered ${status} (private, gated or missing repo): ${token}, accept its licence on ${repoPage(t)} if it is gated, and check the repo id`);
  }
  if (res.status === 404) {
    if (code === 'RevisionNotFound') return new HubError('not-found', `revision "${t.revision}" of ${repoLabel(t.repo)} not found on ${t.endpoint} (${status}): name an existing branch, tag or commit`);
    if (code === 'EntryNotFound' || (t.path && code !== 'RepoNotFound')) return new HubError('not-found', `file ${t.path ?? '?'} not found in ${repoLabel(t.repo)} at revision ${t.revision} on ${t.endpoint} (${status})`);
    const hint = t.repo.type === 'model' ? ' (a dataset repo needs --dataset)' : '';
    if (code === 'RepoNotFound') return new HubError('not-found', `${repoLabel(t.repo)} not found on ${t.endpoint} (${status}): check the repo id${hint}`);
    return new HubError('not-found', `${repoLabel(t.repo)} or its revision "${t.revision}" not found on ${t.endpoint} (${status}): check the repo id and revision${hint}`);
  }
  const reason = await serverReason(res);
  return new HubError('http', `cannot download ${what}: the hub at ${t.endpoint} answered ${status}${reason ? ` (${reason})` : ''}`);
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

export function backoff(policy: RetryPolicy, attempt: number, signal?: AbortSignal): Promise<void> {
  return sleep(policy.delayMs * 2 ** attempt, signal);
}

/**
 * A fetch for the hub API calls that @huggingface/hub makes: transient failures are retried, and any
 * other failed response becomes a HubError here, with the repo and revision named, before the library
 * sees it.
 */
export function apiFetch(t: Target, policy: RetryPolicy, signal?: AbortSignal, onRetry?: (reason: string, attempt: number) => void): typeof fetch {
  return async (input, init) => {
    for (let attempt = 0; ; attempt++) {
      let res: Response;
      try {
        res = await fetch(input, { ...init, ...(signal && { signal }) });
      } catch (err) {
        if (isAbort(err, signal)) throw signal?.reason ?? err;
        if (attempt + 1 >= policy.attempts) throw networkError(t, networkReason(err), attempt + 1);
        onRetry?.(networkReason(err), attempt + 1);
        await backoff(policy, attempt, signal);
        continue;
      }
      if (res.ok) return res;
      if (isTransientStatus(res.status) && attempt + 1 < policy.attempts) {
        await res.body?.cancel();
        onRetry?.(`HTTP ${res.status}`, attempt + 1);
        await backoff(policy, attempt, signal);
        continue;
      }
      throw await httpError(res, t);
    }
  };
}

