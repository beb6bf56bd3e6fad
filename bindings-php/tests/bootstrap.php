<?php

declare(strict_types=1);

/*
 * Test bootstrap: the extension must be loaded (run-tests.sh passes -d extension=...), then
 * Laravel from Debian's php-laravel-framework and a PSR-4 autoloader for this package.
 */

if (!extension_loaded('polybus')) {
    fwrite(STDERR, "The polybus extension is not loaded: run bindings-php/run-tests.sh\n");
    exit(1);
}

$laravel = getenv('POLYBUS_LARAVEL_AUTOLOAD') ?: '/usr/share/php/Illuminate/autoload.php';
if (!is_file($laravel)) {
    fwrite(STDERR, "Laravel's autoloader ($laravel) is missing: run scripts/install-php.sh\n");
    exit(1);
}
require_once $laravel;

spl_autoload_register(static function (string $class): void {
    $roots = [
        'Polybus\\Laravel\\' => dirname(__DIR__) . '/src/Laravel/',
        'Polybus\\Tests\\' => __DIR__ . '/',
    ];
    foreach ($roots as $prefix => $dir) {
        if (str_starts_with($class, $prefix)) {
            $file = $dir . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
            if (is_file($file)) {
                require_once $file;
            }

            return;
        }
    }
});
