import { EXIT, type CliEnv } from './program.js';

/**
 * Runs `body` with Ctrl-C wired to its abort signal: the first SIGINT calls `onFirst` and aborts (the
 * command stops at its next safe point and says what it kept), a second quits at once. Every long
 * command (run, download, poison) goes through here so they all answer Ctrl-C the same way.
 */
export async function withCtrlC<T>(env: CliEnv, body: (signal: AbortSignal) => Promise<T>, onFirst?: () => void): Promise<T> {
  const controller = new AbortController();
  const signals = env.signals ?? process;
  const onSigint = () => {
    if (controller.signal.aborted) process.exit(EXIT.interrupted); // second Ctrl-C: the user means it
    onFirst?.();
    controller.abort();
  };
  signals.on('SIGINT', onSigint);
  try {
    return await body(controller.signal);
  } finally {
    signals.off('SIGINT', onSigint);
  }
}
