import cliProgress from 'cli-progress';
import type { HubProgressEvent } from '@musclelora/trainer';
import type { Output } from './progress.js';

// Hub download progress on stderr: on a terminal a byte bar per file; elsewhere one line per file, retry
// and cache decision, so logs say what was fetched.

/** 1234567 -> "1.2 MB" (SI units, as the hub shows sizes). */
export function formatBytes(n: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let value = n;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit++;
  }
  return unit === 0 ? `${n} B` : `${value.toFixed(1)} ${units[unit]}`;
}

export class DownloadProgress {
  private bar: cliProgress.SingleBar | undefined;

  constructor(private readonly out: Output) {}

  private log(line: string): void {
    this.stopBar();
    this.out.write(`${line}\n`);
  }

  handle(event: HubProgressEvent): void {
    switch (event.type) {
      case 'plan': {
        const what = event.repoType === 'dataset' ? `dataset ${event.repo}` : event.repo;
        const cached = event.cachedFiles > 0 ? `, ${event.cachedFiles} already cached` : '';
        this.log(`${what} at ${event.revision} (${event.commit.slice(0, 12)}): ${event.files} ${event.files === 1 ? 'file' : 'files'}${cached}, ${formatBytes(event.bytes)} to download`);
        break;
      }
      case 'file':
        if (this.out.isTTY) {
          this.stopBar();
          this.bar = new cliProgress.SingleBar(
            { stream: this.out as NodeJS.WritableStream, format: '{path} [{bar}] {percentage}% | {got}/{size} | ETA {eta_formatted}', hideCursor: true, gracefulExit: false, fps: 8 },
            cliProgress.Presets.shades_classic,
          );
          this.bar.start(event.size, event.from, { path: event.path, got: formatBytes(event.from), size: formatBytes(event.size) });
        } else {
          this.log(event.from > 0 ? `resuming ${event.path} at ${formatBytes(event.from)} of ${formatBytes(event.size)}` : `fetching ${event.path} (${formatBytes(event.size)})`);
        }
        break;
      case 'bytes':
        this.bar?.update(event.received, { got: formatBytes(event.received) });
        break;
      case 'fileDone':
        this.stopBar();
        break;
      case 'retry':
        this.log(`retrying ${event.path ?? 'the hub API'} (try ${event.attempt + 1}) after: ${event.reason}`);
        break;
      case 'cacheOnly':
        this.log(event.reason === 'offline' ? `HF_HUB_OFFLINE is set: ${event.repo} from the cache` : `the hub is unreachable: ${event.repo} from the cache (the revision is cached whole)`);
        break;
      case 'done':
        this.stopBar();
        break;
    }
  }

  private stopBar(): void {
    this.bar?.stop();
    this.bar = undefined;
  }

  stop(): void {
    this.stopBar();
  }
}
