import type { OpenSession, SessionOptions, Session } from './session.js';

/** Raised when the Rust engine has not been built (or exports something unexpected). */
export class NativeEngineError extends Error {
  override readonly name = 'NativeEngineError';
}

// The specifier lives in a variable so that TypeScript does not try to resolve the module at build time:
// the package's index.js / index.d.ts only exist after the Rust build, and everything that does not train
// (config, data, --help, --print-config) must work without it.
const NATIVE_MODULE = '@musclelora/core-native';

let cached: Promise<OpenSession> | undefined;

async function loadNative(): Promise<OpenSession> {
  let mod: Record<string, unknown>;
  try {
    mod = (await import(NATIVE_MODULE)) as Record<string, unknown>;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const detail = code === 'ERR_MODULE_NOT_FOUND' || code === 'MODULE_NOT_FOUND' ? 'it is not built' : String((err as Error).message).split('\n')[0];
    throw new NativeEngineError(`the native engine ${NATIVE_MODULE} cannot be loaded (${detail}); run \`pnpm build\` (needs a Rust toolchain)`);
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
