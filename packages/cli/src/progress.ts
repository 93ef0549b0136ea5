import cliProgress from 'cli-progress';
import { formatPercent, type ProgressEvent } from '@musclelora/trainer';
import { DownloadProgress } from './download-progress.js';

// Live progress on stderr: on a terminal a bar with ETA, smoothed loss and the last dev accuracy; elsewhere
// (logs, CI) one line per method start, epoch and result, so logs stay readable.

export interface Output {
  write(text: string): unknown;
  isTTY?: boolean;
}

const pct = (v: number | null) => formatPercent(v, '%');

export class ProgressReporter {
  private multibar: cliProgress.MultiBar | undefined;
  private bar: cliProgress.SingleBar | undefined;
  private loss: number | undefined;
  private epochs = 0;
  private readonly download: DownloadProgress;

  constructor(private readonly out: Output) {
    this.download = new DownloadProgress(out);
  }

  private log(line: string): void {
    if (this.multibar) this.multibar.log(`${line}\n`);
    else this.out.write(`${line}\n`);
  }

  handle(event: ProgressEvent): void {
    switch (event.type) {
      case 'start': {
        this.loss = undefined;
        this.epochs = event.epochs;
        this.log(`${event.attack}/${event.method}${event.device ? ` on ${event.device}` : ''}: ${event.epochs} epochs of ${event.stepsPerEpoch} steps, ${event.numTrainable.toLocaleString('en')} trainable parameters`);
        if (this.out.isTTY) {
          this.multibar = new cliProgress.MultiBar(
            {
              stream: this.out as NodeJS.WritableStream,
              format: '{name} [{bar}] {percentage}% | step {value}/{total} | ETA {eta_formatted} | epoch {epoch} | loss {loss} | dev acc {devAcc} | {phase}',
              hideCursor: true,
              gracefulExit: false, // Ctrl-C is ours: it stops training cleanly
              etaBuffer: 50,
              fps: 4,
            },
            cliProgress.Presets.shades_classic,
          );
          this.bar = this.multibar.create(event.totalSteps, 0, { name: `${event.attack}/${event.method}`, epoch: `1/${event.epochs}`, loss: '–', devAcc: '–', phase: 'training' });
        }
        break;
      }
      case 'step':
        // An exponential moving average: single-batch losses jump too much to read.
        this.loss = this.loss === undefined ? event.loss : 0.9 * this.loss + 0.1 * event.loss;
        this.bar?.update(event.step, { epoch: `${event.epoch + 1}/${this.epochs}`, loss: this.loss.toFixed(4), phase: `training (GA: ${event.gaBranch})` });
        break;
      case 'evaluate':
        this.bar?.update({ phase: `evaluating ${event.split}` });
        break;
      case 'epochEnd':
        this.bar?.update({ devAcc: pct(event.devAcc) });
        this.log(`${event.attack}/${event.method} epoch ${event.epoch + 1}/${this.epochs}: dev acc ${pct(event.devAcc)}, dev ASR ${pct(event.devAsr)}${event.best ? ' (best so far)' : ''}`);
        break;
      case 'result': {
        const r = event.result;
        this.stop();
        this.log(
          r.status === 'aborted'
            ? `${r.attack}/${r.method}: stopped after ${r.steps} steps`
            : `${r.attack}/${r.method}: CACC ${pct(r.cacc)}, ASR ${pct(r.asr)} (epoch ${(r.bestEpoch ?? 0) + 1}, ${r.select} selection, ${r.seconds.toFixed(0)} s)`,
        );
        break;
      }
      case 'warning':
        this.log(`warning: ${event.message}`);
        break;
      case 'download':
        this.download.handle(event.event);
        break;
    }
  }

  stop(): void {
    this.download.stop();
    // Lines logged above the bar wait for its next redraw; draw once more so the last ones are not lost.
    this.multibar?.update();
    this.multibar?.stop();
    this.multibar = undefined;
    this.bar = undefined;
  }
}
