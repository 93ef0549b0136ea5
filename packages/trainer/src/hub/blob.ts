import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { sizeOf } from './cache.js';
import { HubError } from './errors.js';
import { backoff, describeTarget, httpError, isAbort, isTransientStatus, networkError, networkReason, type RetryPolicy, type Target } from './request.js';

// One file's bytes into blobs/<etag>: written to <blob>.incomplete, resumed from its length with an HTTP
// Range request after a dropped connection (or a killed earlier run), restarted from 0 when the server
// ignores the Range, checked against the size and hash the hub lists, and only then renamed into place.

export interface BlobDownload {
  /** The resolve URL of the file at its commit. */
  url: string;
  headers: Record<string, string>;
  /** The final blob path; `<blob>.incomplete` while it downloads. */
  blob: string;
  size: number;
  /** LFS files: the sha256 of the content. Others: the git blob sha1 (of "blob <size>\0" + content). */
  hash: { algorithm: 'sha256' | 'git-sha1'; hex: string };
  target: Target;
  policy: RetryPolicy;
  signal?: AbortSignal;
  /** A download (re)starts at byte `from` (0, or where the .incomplete file ends). */
  onStart?: (from: number) => void;
  onBytes?: (received: number) => void;
  onRetry?: (reason: string, attempt: number) => void;
}

/** A failure worth another try: the connection dropped or stalled, a transient status, an inconsistent range. */
class Dropped extends Error {}

/** Aborts a request that receives nothing for `ms`: a stalled connection is retried like a dropped one. */
class Watchdog {
  readonly controller = new AbortController();
  private timer: NodeJS.Timeout | undefined;
  constructor(private readonly ms: number) {
    this.kick();
  }
  kick(): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.controller.abort(), this.ms);
  }
  get fired(): boolean {
    return this.controller.signal.aborted;
  }
  stop(): void {
    clearTimeout(this.timer);
  }
}

async function hashFile(path: string, hash: BlobDownload['hash'], size: number): Promise<string> {
  const h = createHash(hash.algorithm === 'sha256' ? 'sha256' : 'sha1');
  if (hash.algorithm === 'git-sha1') h.update(`blob ${size}\0`);
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Fetches what `partial` lacks, appending (206) or starting over (200). Returns when the body ended. */
async function fetchInto(job: BlobDownload, partial: string): Promise<void> {
  let have = (await sizeOf(partial)) ?? 0;
  if (have > job.size) {
    await rm(partial, { force: true });
    have = 0;
  }
  if (have === job.size && have > 0) return; // an earlier run got every byte but stopped before the rename

  const watchdog = new Watchdog(job.policy.stallMs);
  try {
    return await fetchBody(job, partial, have, watchdog);
  } finally {
    watchdog.stop();
  }
}

async function fetchBody(job: BlobDownload, partial: string, have: number, watchdog: Watchdog): Promise<void> {
  const signal = job.signal ? AbortSignal.any([job.signal, watchdog.controller.signal]) : watchdog.controller.signal;
  /** The error to throw for a failed request or body: the caller's abort, or a Dropped worth a retry. */
  const failed = (err: unknown, what: string): unknown => {
    if (job.signal?.aborted) return job.signal.reason;
    if (watchdog.fired) return new Dropped(`${what}no data for ${job.policy.stallMs / 1000} s`);
    if (isAbort(err)) return err;
    return new Dropped(`${what}${networkReason(err)}`, { cause: err });
  };
  let res: Response;
  try {
    // identity: the byte counts, ranges and hashes are of the file itself, never of a compressed stream.
    res = await fetch(job.url, { headers: { ...job.headers, 'Accept-Encoding': 'identity', ...(have > 0 && { Range: `bytes=${have}-` }) }, signal });
  } catch (err) {
    throw failed(err, '');
  }
  watchdog.kick();
  let from = 0;
  if (res.status === 206) {
    // Appending is right only when the server sends exactly the bytes after ours.
    const start = /^bytes (\d+)-/.exec(res.headers.get('content-range') ?? '')?.[1];
    if (Number(start) !== have) {
      await res.body?.cancel();
      await rm(partial, { force: true });
      throw new Dropped(`the server answered the range from ${have} with ${res.headers.get('content-range') ?? 'no Content-Range'}`);
    }
    from = have;
  } else if (res.status === 416) {
    await res.body?.cancel();
    await rm(partial, { force: true }); // the server's file is not the one we began: start over
    throw new Dropped('HTTP 416 for the partial download');
  } else if (!res.ok) {
    if (isTransientStatus(res.status)) {
      await res.body?.cancel();
      throw new Dropped(`HTTP ${res.status}`);
    }
    throw await httpError(res, job.target);
  }
  // 200 to a Range request: the server ignored it and sends the whole file; start over.

  job.onStart?.(from);
  const handle = await open(partial, from > 0 ? 'a' : 'w');
  let received = from;
  try {
    if (res.body) {
      for await (const chunk of res.body) {
        if (received + chunk.length > job.size) {
          throw new HubError('integrity', `${describeTarget(job.target)}: the server sent more than the ${job.size} bytes the hub lists for it; the download was discarded, run again`);
        }
        watchdog.kick();
        await handle.write(chunk);
        received += chunk.length;
        job.onBytes?.(received);
      }
    }
  } catch (err) {
    if (err instanceof HubError) {
      await handle.close();
      await rm(partial, { force: true });
      throw err;
    }
    throw failed(err, `after ${received} of ${job.size} bytes: `);
  } finally {
    await handle.close().catch(() => undefined);
  }
  if (received < job.size) throw new Dropped(`after ${received} of ${job.size} bytes: the connection closed early`);
}

/** Downloads, verifies and renames one blob into place; the final name holds verified bytes or nothing. */
export async function downloadBlob(job: BlobDownload): Promise<void> {
  const partial = `${job.blob}.incomplete`;
  await mkdir(dirname(job.blob), { recursive: true });
  for (let attempt = 0; ; attempt++) {
    try {
      await fetchInto(job, partial);
      break;
    } catch (err) {
      if (!(err instanceof Dropped)) throw err;
      if (attempt + 1 >= job.policy.attempts) throw networkError(job.target, err.message, attempt + 1);
      job.onRetry?.(err.message, attempt + 1);
      await backoff(job.policy, attempt, job.signal);
    }
  }

  const what = describeTarget(job.target);
  const got = (await sizeOf(partial)) ?? 0;
  if (got !== job.size) {
    await rm(partial, { force: true });
    throw new HubError('integrity', `${what}: got ${got} bytes where the hub lists ${job.size}; the download was discarded, run again`);
  }
  const digest = await hashFile(partial, job.hash, job.size);
  if (digest !== job.hash.hex) {
    await rm(partial, { force: true });
    const name = job.hash.algorithm === 'sha256' ? 'sha256' : 'git sha1';
    throw new HubError('integrity', `${what}: ${name} ${digest} does not match the hub's ${job.hash.hex}; the download was discarded (corrupted on the way), run again`);
  }
  await rename(partial, job.blob);
}
