import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import type { OpenSession, SessionOptions, Session } from './session.js';

/** Raised when the Rust engine has not been built (or exports something unexpected). */
export class NativeEngineError extends Error {
  override readonly name = 'NativeEngineError';
}

const NATIVE_MODULE = '@musclelora/core-native';

let cached: Promise<OpenSession> | undefined;

async function loadNative(): Promise<OpenSession> {
  // Locating the entry first tells "not built" (the Rust build writes index.js) from "built but broken",
  // the same way under Node and under the test runner. Importing by path also keeps TypeScript from
  // resolving the module at build time, when its index.d.ts may not exist yet.
  let entry: string;
  try {
    entry = createRequire(import.meta.url).resolve(NATIVE_MODULE);
  } catch {
    throw new NativeEngineError(`the native engine ${NATIVE_MODULE} cannot be loaded (it is not built); run \`pnpm build\` (needs a Rust toolchain)`);
  }
  let mod: Record<string, unknown>;
  try {
    mod = (await import(pathToFileURL(entry).href)) as Record<string, unknown>;
  } catch (err) {
    throw new NativeEngineError(`the native engine ${NATIVE_MODULE} cannot be loaded (${String((err as Error).message).split('\n')[0]}); rebuild it with \`pnpm build\``);
  }
  // napi-rs generates CommonJS; Node exposes its exports as named exports and as `default`.
  const open = mod['openSession'] ?? (mod['default'] as Record<string, unknown> | undefined)?.['openSession'];
  if (typeof open !== 'function') {
    throw new NativeEngineError(`the native engine ${NATIVE_MODULE} does not export openSession(); rebuild it with \`pnpm build\``);
  }
  return open as OpenSession;
}

/** Opens a session on the Rust engine, importing the native module on first use only. */
export const openNativeSession: OpenSession = async (opts: SessionOptions): Promise<Session> => {
  cached ??= loadNative();
  try {
    return await (await cached)(opts);
  } catch (err) {
    if (err instanceof NativeEngineError) cached = undefined; // let a later call retry after a build
    throw err;
  }
};
