<?php

declare(strict_types=1);

namespace Polybus\Tests\Laravel;

use Illuminate\Config\Repository;
use Illuminate\Contracts\Console\Kernel as KernelContract;
use Illuminate\Contracts\Debug\ExceptionHandler;
use Illuminate\Foundation\Application;
use Illuminate\Foundation\Console\Kernel;
use Illuminate\Foundation\Exceptions\Handler;
use Polybus\Laravel\MessagingServiceProvider;
use Psr\Log\LoggerInterface;

/**
 * A minimal Laravel application (Debian's php-laravel-framework) with the package's provider,
 * as an application's bootstrap/app.php would build it.
 */
final class TestApplication
{
    /**
     * Boots an application whose `messaging` configuration is the package's, with `$messaging`
     * merged over it; `$logger` receives the log.
     *
     * @param array<string, mixed> $messaging
     */
    public static function boot(array $messaging, LoggerInterface $logger): Application
    {
        $base = sys_get_temp_dir() . '/polybus-laravel-' . getmypid();
        foreach (['bootstrap/cache', 'config', 'storage/logs', 'storage/framework'] as $dir) {
            if (!is_dir("$base/$dir")) {
                mkdir("$base/$dir", 0o777, true);
            }
        }
        $app = new Application($base);
        $app->singleton(KernelContract::class, Kernel::class);
        $app->singleton(ExceptionHandler::class, Handler::class);
        $app->instance('config', new Repository([
            'app' => ['name' => 'polybus-test', 'env' => 'testing', 'debug' => true, 'providers' => [], 'aliases' => []],
            'messaging' => array_replace_recursive(require MessagingServiceProvider::configPath(), $messaging),
        ]));
        $app->instance(LoggerInterface::class, $logger);
        $app->instance('log', $logger);
        $app->register(MessagingServiceProvider::class);
        $app->boot();
        // Configuration, providers and boot are done above: the console kernel must not load
        // them again from files.
        $app->bootstrapWith([]);

        return $app;
    }
}
